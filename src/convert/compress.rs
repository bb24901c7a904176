//! zlib framing for bytea payloads (job specs, error texts), as upstream:
//! payloads longer than the threshold are compressed at speed level, shorter
//! ones are wrapped in an uncompressed zlib stream, so readers always inflate.

use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::Write;

pub fn zlib(data: &[u8], min_compression_size: usize) -> std::io::Result<Vec<u8>> {
    let level = if data.len() > min_compression_size {
        Compression::fast()
    } else {
        Compression::none()
    };
    let mut enc = ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 16), level);
    enc.write_all(data)?;
    enc.finish()
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
    fn round_trips_below_and_above_threshold() {
        for n in [0usize, 10, 1024, 1025, 100_000] {
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
