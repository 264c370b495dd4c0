//! The seal `edge-agent precompile` puts on a `.cwasm`: the artifact's CRC-32 and a mark,
//! after wasmtime's bytes. wasmtime checks an artifact's header (its version, target and
//! settings) but runs its code as it is, so a `.cwasm` damaged on a device (a bad SD-card
//! sector) crashed the agent at its first event, at every start. A sealed artifact whose
//! CRC-32 does not match is refused at load with a clear error instead. A copy cut short
//! loses the seal with its tail (the loader tells native code that is not a whole
//! artifact apart); artifacts without the seal (made before 2026-12-08, or with the seal
//! itself hit) still load, unchecked.

/// The last bytes of a sealed artifact, after the CRC-32 (little-endian) of what precedes
/// it.
const MARK: &[u8; 8] = b"EA-CRC32";

/// How long the seal is.
const SEAL_LEN: usize = 4 + MARK.len();

/// `artifact` (wasmtime's serialised component) with its seal.
pub fn seal(mut artifact: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&artifact);
    artifact.extend_from_slice(&crc.to_le_bytes());
    artifact.extend_from_slice(MARK);
    artifact
}

/// A sealed artifact whose code is not what was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damaged {
    /// The CRC-32 of the code as read.
    pub actual: u32,
    /// The CRC-32 in the seal.
    pub sealed: u32,
}

/// wasmtime's bytes of `file`: without the seal when it has one that matches, the whole
/// file when it has none.
///
/// # Errors
/// [`Damaged`] when the seal does not match the bytes before it.
pub fn unseal(file: &[u8]) -> Result<&[u8], Damaged> {
    let Some(body_len) = file.len().checked_sub(SEAL_LEN) else {
        return Ok(file);
    };
    let (body, seal) = file.split_at(body_len);
    let (crc, mark) = seal.split_at(4);
    if mark != MARK {
        return Ok(file);
    }
    let sealed = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    let actual = crc32fast::hash(body);
    if actual == sealed {
        Ok(body)
    } else {
        Err(Damaged { actual, sealed })
    }
}

#[cfg(test)]
mod tests {
    use super::{Damaged, seal, unseal};

    #[test]
    fn a_sealed_artifact_unseals_to_its_bytes() {
        let artifact = b"\x7fELF and some native code".to_vec();
        let sealed = seal(artifact.clone());
        assert_eq!(unseal(&sealed), Ok(&artifact[..]));
    }

    #[test]
    fn damage_anywhere_in_a_sealed_artifact_is_told() {
        let sealed = seal(vec![7; 4096]);
        for at in [0, 2048, 4095, 4096] {
            let mut damaged = sealed.clone();
            damaged[at] ^= 0x10;
            assert!(
                matches!(unseal(&damaged), Err(Damaged { .. })),
                "a flipped bit at {at} got through"
            );
        }
        // A cut copy loses the seal with the tail: wasmtime then refuses the short file.
        assert_eq!(unseal(&sealed[..100]), Ok(&sealed[..100]));
    }

    #[test]
    fn an_artifact_without_a_seal_is_taken_whole() {
        for file in [&b""[..], b"short", &[9; 64]] {
            assert_eq!(unseal(file), Ok(file));
        }
    }
}
