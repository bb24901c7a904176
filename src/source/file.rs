//! The recorded-event file format, read by `replay` and written by `record`
//! and `sample`.
//!
//! A file is a stream of records, each an unsigned LEB128 varint length N
//! followed by N bytes of one serialized EventSequence: protobuf's standard
//! length-delimited stream. A gzip-compressed file (recognised by its magic
//! bytes, not its name) holds the same stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// Records larger than this are refused rather than allocated: a corrupt
/// length prefix must not make the reader ask for exabytes. Pulsar's default
/// maximum message size is 5 MiB; this leaves ample room.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("record length prefix is not a valid varint")]
    BadLength,
    #[error("record length {0} exceeds the {MAX_RECORD_BYTES}-byte limit")]
    TooLong(u64),
    #[error("file ends inside a record: {wanted} bytes announced, {got} present")]
    Truncated { wanted: u64, got: u64 },
}

/// Reads records one by one. After an error the stream cannot be resynchronised
/// (the next length prefix is unknown), so callers stop at the first error.
pub struct RecordReader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner: BufReader::with_capacity(256 * 1024, inner),
        }
    }

    /// The next record, `Ok(None)` at a clean end of stream.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(len) = self.read_varint()? else {
            return Ok(None);
        };
        if len > MAX_RECORD_BYTES {
            return Err(ReadError::TooLong(len));
        }
        // len <= MAX_RECORD_BYTES fits in usize on every supported target.
        let mut buf = Vec::with_capacity(len.min(1 << 20) as usize);
        let got = (&mut self.inner).take(len).read_to_end(&mut buf)? as u64;
        if got < len {
            return Err(ReadError::Truncated { wanted: len, got });
        }
        Ok(Some(buf))
    }

    fn read_varint(&mut self) -> Result<Option<u64>, ReadError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = match self.inner.fill_buf()?.first() {
                Some(&b) => b,
                None if i == 0 => return Ok(None),
                None => return Err(ReadError::Truncated { wanted: 1, got: 0 }),
            };
            self.inner.consume(1);
            if i == 9 && byte > 1 {
                return Err(ReadError::BadLength);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(ReadError::BadLength)
    }
}

/// Counts bytes as they are read from the file, for progress reporting.
pub struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens a recorded file, plain or gzip. `progress` receives the number of
/// file bytes read (compressed bytes for gzip).
pub fn open(
    path: &Path,
    progress: Arc<AtomicU64>,
) -> io::Result<RecordReader<Box<dyn Read + Send>>> {
    let mut file = BufReader::new(File::open(path)?);
    let gz = file.fill_buf()?.starts_with(&GZIP_MAGIC);
    let counted = Counting {
        inner: file,
        count: progress,
    };
    let inner: Box<dyn Read + Send> = if gz {
        Box::new(MultiGzDecoder::new(counted))
    } else {
        Box::new(counted)
    };
    Ok(RecordReader::new(inner))
}

/// Writes records; `finish` flushes (and closes the gzip stream).
pub struct RecordWriter {
    inner: Box<dyn WriteFinish>,
    pub records: u64,
}

trait WriteFinish: Write + Send {
    fn finish_box(self: Box<Self>) -> io::Result<()>;
}

impl WriteFinish for BufWriter<File> {
    fn finish_box(mut self: Box<Self>) -> io::Result<()> {
        self.flush()?;
        self.get_ref().sync_all()
    }
}

impl WriteFinish for GzEncoder<BufWriter<File>> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        let mut w = (*self).finish()?;
        w.flush()?;
        w.get_ref().sync_all()
    }
}

impl RecordWriter {
    /// Creates `path`; gzip when `gzip` is set.
    pub fn create(path: &Path, gzip: bool) -> io::Result<RecordWriter> {
        let file = BufWriter::new(File::create(path)?);
        let inner: Box<dyn WriteFinish> = if gzip {
            Box::new(GzEncoder::new(file, Compression::default()))
        } else {
            Box::new(file)
        };
        Ok(RecordWriter { inner, records: 0 })
    }

    pub fn write_record(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut len = Vec::with_capacity(10);
        encode_varint(payload.len() as u64, &mut len);
        self.inner.write_all(&len)?;
        self.inner.write_all(payload)?;
        self.records += 1;
        Ok(())
    }

    pub fn finish(self) -> io::Result<()> {
        self.inner.finish_box()
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<String>) {
        let mut r = RecordReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match r.next_record() {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 300], vec![0; 70_000]];
        for gz in [false, true] {
            let path = dir.path().join(format!("f{gz}"));
            let mut w = RecordWriter::create(&path, gz).expect("create");
            for r in &records {
                w.write_record(r).expect("write");
            }
            w.finish().expect("finish");
            let mut r = open(&path, Arc::new(AtomicU64::new(0))).expect("open");
            let mut got = Vec::new();
            while let Some(rec) = r.next_record().expect("read") {
                got.push(rec);
            }
            assert_eq!(got, records, "gzip={gz}");
        }
    }

    #[test]
    fn varint_boundaries() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            encode_varint(v, &mut b);
            let mut r = RecordReader::new(b.as_slice());
            assert_eq!(r.read_varint().expect("varint"), Some(v));
        }
    }

    #[test]
    fn truncated_payload_is_an_error_after_good_records() {
        let mut b = Vec::new();
        encode_varint(2, &mut b);
        b.extend([9, 9]);
        encode_varint(10, &mut b);
        b.extend([1, 2, 3]);
        let (recs, err) = read_all(&b);
        assert_eq!(recs, vec![vec![9, 9]]);
        assert!(err
            .expect("error")
            .contains("10 bytes announced, 3 present"));
    }

    #[test]
    fn truncated_varint_and_overlong_lengths() {
        let (_, err) = read_all(&[0x80]);
        assert!(err.is_some());
        let (_, err) = read_all(&[0xff; 11]);
        assert!(err.expect("error").contains("varint"));
        let mut b = Vec::new();
        encode_varint(MAX_RECORD_BYTES + 1, &mut b);
        let (_, err) = read_all(&b);
        assert!(err.expect("error").contains("exceeds"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = read_all(&bytes);
        }
    }
}
