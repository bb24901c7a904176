//! zlib framing for bytea payloads (job specs, error texts), as upstream:
//! payloads longer than the threshold are compressed at speed level, shorter
//! ones are wrapped in an uncompressed zlib stream, so readers always inflate.

use flate2::{Compress, Compression, FlushCompress, Status};
use std::cell::RefCell;

thread_local! {
    // One compressor per thread, reset between payloads: a new one
    // allocates and zeroes about 300 KB of tables.
    static FAST: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), true));
}

pub fn zlib(data: &[u8], min_compression_size: usize) -> std::io::Result<Vec<u8>> {
    if data.len() <= min_compression_size {
        return Ok(stored(data));
    }
    FAST.with_borrow_mut(|c| {
        // Whatever the last call left (an error included), start afresh.
        c.reset();
        deflate_all(c, data)
    })
}

/// A zlib stream of stored (uncompressed) deflate blocks, written directly:
/// even resetting a compressor zeroes its tables, which cost more than
/// copying a typical job spec (about 700 bytes, under the threshold).
fn stored(data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = u16::MAX as usize;
    let blocks = data.len().div_ceil(BLOCK).max(1);
    let mut out = Vec::with_capacity(2 + blocks * 5 + data.len() + 4);
    // CMF: deflate, 32 KiB window; FLG: fastest level, check bits.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler2::adler32_slice(data).to_be_bytes());
    out
}

fn deflate_all(c: &mut Compress, data: &[u8]) -> std::io::Result<Vec<u8>> {
    // Job specs deflate to about a third; sized for half, grown if needed
    // (sized for the input, a batch's specs held a megabyte per thousand jobs
    // of spare capacity).
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        match c.compress_vec(rest, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => {
                out.shrink_to_fit();
                return Ok(out);
            }
            Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(64)),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

/// Inflates a zlib stream; used by tests and tools that read rows back.
pub fn unzlib(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(data), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_streams_are_what_a_level_0_encoder_writes() {
        use std::io::Write as _;
        for n in [0usize, 1, 700, 4096, 65_535, 65_536, 200_000] {
            let data: Vec<u8> = (0..n).map(|i| (i % 13) as u8).collect();
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::none());
            enc.write_all(&data).expect("encode");
            let reference = enc.finish().expect("finish");
            let ours = zlib(&data, usize::MAX).expect("stored");
            assert_eq!(unzlib(&ours).expect("inflate"), data, "{n} bytes");
            // Below miniz's own block size, byte for byte what it wrote.
            if n <= 4096 {
                assert!(
                    ours == reference,
                    "{n} bytes differ from a level 0 encoder's"
                );
            }
        }
    }

    #[test]
    fn a_reused_compressor_gives_the_same_bytes() {
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let first = zlib(&data, 1024).expect("compress");
        let _ = zlib(b"something else entirely, shorter", 8).expect("compress");
        assert_eq!(zlib(&data, 1024).expect("compress"), first);
        assert_eq!(unzlib(&first).expect("inflate"), data);
    }

    #[test]
    fn round_trips_below_and_above_threshold() {
        for n in [0usize, 10, 1024, 1025, 100_000, 300_000] {
            let data: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
            let z = zlib(&data, 1024).expect("compress");
            assert_eq!(unzlib(&z).expect("inflate"), data);
            if n > 1024 {
                assert!(z.len() < n, "long payloads are compressed");
            } else {
                assert!(z.len() >= n, "short payloads are stored");
            }
        }
    }
}
