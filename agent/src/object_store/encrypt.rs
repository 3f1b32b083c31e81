//! Client-side encryption of objects (opt-in per database): the object store only ever sees
//! ciphertext, and the key never leaves the machines that replicate, restore or drill.
//!
//! Format: an 8-byte magic, a 16-byte random nonce prefix, then the plaintext in 64 KiB chunks,
//! each sealed with XChaCha20-Poly1305 (16-byte tag) under the nonce `prefix || index | last`
//! (big-endian u64, the top bit marks the final chunk). Chunks cannot be reordered, dropped or
//! truncated without failing authentication; an empty object is one empty final chunk. The
//! object's key is not bound into the ciphertext, so a server-side copy (a generation's base)
//! stays readable.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

pub const MAGIC: &[u8; 8] = b"WFENC\x01\0\0";
pub const HEADER: usize = 24;
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
pub const SEALED_CHUNK: usize = CHUNK + TAG;
const LAST: u64 = 1 << 63;

/// A 256-bit key, given as 64 hex digits. Never printed.
#[derive(Clone)]
pub struct EncryptionKey(XChaCha20Poly1305);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl std::str::FromStr for EncryptionKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bytes = hex::decode(s).map_err(|_| "an encryption key is 64 hex digits (32 bytes)".to_string())?;
        if bytes.len() != 32 {
            return Err(format!("an encryption key is 64 hex digits (32 bytes), not {} digits", s.len()));
        }
        XChaCha20Poly1305::new_from_slice(&bytes).map(EncryptionKey).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("object {key} is not encrypted by walfleet (no encryption header) but an encryption key is configured")]
    NotEncrypted { key: String },
    #[error("object {key} cannot be decrypted (chunk {chunk}): wrong encryption key, or the object is damaged")]
    Authentication { key: String, chunk: u64 },
    #[error("object {key} is encrypted by walfleet: give the database's encryption key (WALFLEET_ENCRYPTION_KEY)")]
    KeyRequired { key: String },
    #[error("object {key} is truncated: its encrypted chunks end early")]
    Truncated { key: String },
}

fn nonce(prefix: &[u8], index: u64, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(prefix);
    n[16..].copy_from_slice(&(index | if last { LAST } else { 0 }).to_be_bytes());
    XNonce::from(n)
}

fn header() -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    rand::thread_rng().fill_bytes(&mut h[8..]);
    h
}

/// True when `b` starts with the encryption header's magic.
pub fn is_encrypted(b: &[u8]) -> bool {
    b.len() >= MAGIC.len() && &b[..MAGIC.len()] == MAGIC
}

impl EncryptionKey {
    fn seal_chunk(&self, prefix: &[u8], index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
        // Encryption fails only for inputs beyond the cipher's limits (~256 GiB per chunk).
        self.0.encrypt(&nonce(prefix, index, last), plain).expect("chunk within the cipher's limits")
    }

    fn open_chunk(
        &self,
        key: &str,
        prefix: &[u8],
        index: u64,
        last: bool,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptError> {
        self.0
            .decrypt(&nonce(prefix, index, last), sealed)
            .map_err(|_| CryptError::Authentication { key: key.to_string(), chunk: index })
    }

    /// Encrypts a whole body.
    pub fn seal(&self, plain: &[u8]) -> Bytes {
        let h = header();
        let mut out = Vec::with_capacity(HEADER + plain.len() + (plain.len() / CHUNK + 1) * TAG);
        out.extend_from_slice(&h);
        let chunks: Vec<&[u8]> = if plain.is_empty() { vec![&[][..]] } else { plain.chunks(CHUNK).collect() };
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            out.extend_from_slice(&self.seal_chunk(&h[8..], i as u64, i + 1 == n, c));
        }
        Bytes::from(out)
    }

    /// Decrypts a whole object (`key` names it in errors).
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<Bytes, CryptError> {
        if !is_encrypted(sealed) {
            return Err(CryptError::NotEncrypted { key: key.to_string() });
        }
        if sealed.len() < HEADER + TAG {
            return Err(CryptError::Truncated { key: key.to_string() });
        }
        let prefix = &sealed[8..HEADER];
        let body = &sealed[HEADER..];
        let n = body.len().div_ceil(SEALED_CHUNK);
        let mut out = Vec::with_capacity(body.len());
        for (i, c) in body.chunks(SEALED_CHUNK).enumerate() {
            if c.len() < TAG {
                return Err(CryptError::Truncated { key: key.to_string() });
            }
            out.extend_from_slice(&self.open_chunk(key, prefix, i as u64, i + 1 == n, c)?);
        }
        Ok(Bytes::from(out))
    }

    /// Plaintext `[offset, offset + len)` from the sealed chunks that cover it: `first` is the
    /// index of the first chunk in `sealed` (which holds whole chunks, the last possibly the
    /// object's final one).
    pub fn open_range(
        &self,
        key: &str,
        prefix: &[u8],
        first: u64,
        sealed: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Bytes, CryptError> {
        let mut plain = Vec::with_capacity(sealed.len());
        let n = sealed.len().div_ceil(SEALED_CHUNK);
        for (i, c) in sealed.chunks(SEALED_CHUNK).enumerate() {
            if c.len() < TAG {
                return Err(CryptError::Truncated { key: key.to_string() });
            }
            let index = first + i as u64;
            // A short chunk is the final one; a full-size last chunk may or may not be.
            let opened = if c.len() < SEALED_CHUNK {
                self.open_chunk(key, prefix, index, true, c)?
            } else {
                match self.open_chunk(key, prefix, index, false, c) {
                    Ok(p) => p,
                    Err(e) if i + 1 == n => self.open_chunk(key, prefix, index, true, c).map_err(|_| e)?,
                    Err(e) => return Err(e),
                }
            };
            plain.extend_from_slice(&opened);
        }
        let skip = (offset - first * CHUNK as u64) as usize;
        let end = (skip + len as usize).min(plain.len());
        Ok(Bytes::from(plain).slice(skip.min(end)..end))
    }

    /// Encrypts the file at `src` into `dst` chunk by chunk (bounded memory).
    pub fn seal_file(&self, src: &Path, dst: &Path) -> std::io::Result<()> {
        let mut input = std::io::BufReader::with_capacity(CHUNK, std::fs::File::open(src)?);
        let mut out = std::io::BufWriter::with_capacity(SEALED_CHUNK, std::fs::File::create(dst)?);
        let h = header();
        out.write_all(&h)?;
        let mut cur = read_full(&mut input, CHUNK)?;
        let mut index = 0u64;
        loop {
            let next = if cur.len() == CHUNK { read_full(&mut input, CHUNK)? } else { Vec::new() };
            let last = next.is_empty();
            out.write_all(&self.seal_chunk(&h[8..], index, last, &cur))?;
            if last {
                break;
            }
            cur = next;
            index += 1;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

fn read_full(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> EncryptionKey {
        hex::encode([b; 32]).parse().expect("key")
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn every_size_round_trips_whole_and_by_range() {
        let k = key(1);
        for n in [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let plain = body(n);
            let sealed = k.seal(&plain);
            assert!(is_encrypted(&sealed));
            assert_eq!(k.open("k", &sealed).expect("open").as_ref(), &plain[..], "size {n}");
            for (off, len) in [(0u64, 100u64), (CHUNK as u64 - 3, 10), (n as u64 / 2, CHUNK as u64)] {
                if n == 0 || off >= n as u64 {
                    continue;
                }
                let first = off / CHUNK as u64;
                let last = ((off + len - 1) / CHUNK as u64).min((n.max(1) as u64 - 1) / CHUNK as u64);
                let from = HEADER + first as usize * SEALED_CHUNK;
                let to = (HEADER + (last as usize + 1) * SEALED_CHUNK).min(sealed.len());
                let got = k.open_range("k", &sealed[8..HEADER], first, &sealed[from..to], off, len).expect("range");
                let end = ((off + len) as usize).min(n);
                assert_eq!(got.as_ref(), &plain[off as usize..end], "size {n} range {off}+{len}");
            }
        }
    }

    #[test]
    fn wrong_key_damage_truncation_and_plaintext_fail_naming_the_object() {
        let plain = body(2 * CHUNK + 5);
        let sealed = key(1).seal(&plain);
        let e = key(2).open("gen/0000/a.ltx", &sealed).expect_err("wrong key");
        assert!(e.to_string().contains("gen/0000/a.ltx") && e.to_string().contains("wrong encryption key"), "{e}");
        let mut damaged = sealed.to_vec();
        damaged[HEADER + 10] ^= 1;
        assert!(matches!(key(1).open("x", &damaged), Err(CryptError::Authentication { chunk: 0, .. })));
        // Dropping the final chunk leaves a "complete-looking" object whose last chunk is not
        // marked final: refused.
        let cut = &sealed[..HEADER + 2 * SEALED_CHUNK];
        assert!(key(1).open("x", cut).is_err());
        assert!(matches!(key(1).open("x", &plain), Err(CryptError::NotEncrypted { .. })));
        assert!("abc".parse::<EncryptionKey>().is_err());
        assert!(hex::encode([0u8; 16]).parse::<EncryptionKey>().is_err());
    }

    #[test]
    fn files_are_sealed_chunk_by_chunk_like_bodies() {
        let dir = tempfile::tempdir().expect("dir");
        let k = key(3);
        for n in [0, CHUNK, CHUNK * 2 + 9] {
            let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
            std::fs::write(&src, body(n)).expect("write");
            k.seal_file(&src, &dst).expect("seal");
            let sealed = std::fs::read(&dst).expect("read");
            assert_eq!(k.open("k", &sealed).expect("open").as_ref(), &body(n)[..], "size {n}");
        }
    }
}
