//! Signed deployments: the document that changes the functions of a group of agents
//! (`<topic_prefix>/fleet/<group>/deployment`, retained), its ed25519 signature, and the
//! chunks its modules travel in (`<topic_prefix>/fleet/<group>/module/<sha256>/<block>/<index>`,
//! retained). `edge-agent deploy` makes them; `daemon::deploy` checks and applies them.
//!
//! A document names the functions (their `[[function]]` tables, as in a config file, with
//! `module` naming one of its modules), each module by SHA-256 with the SHA-256 of each of
//! its chunks, and a version that only ever increases. It travels as a string inside an
//! envelope that carries the signature of exactly those bytes and the public key it was
//! made with; an agent trusts the keys of its `[fleet] trusted_keys` and no other.
//!
//! Plain data and pure logic (layer 1): no I/O here.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The format of [`Document`] this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Chunk size `edge-agent deploy` uses unless told otherwise: well under the agent's
/// default `broker.max_packet_bytes` (1 MiB) and Mosquitto's and rumqttd's defaults.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// Room a chunk's packet needs beyond its payload: fixed header, topic
/// (`<prefix>/fleet/<group>/module/<64 hex>/<block>/<index>`) and packet id.
pub const CHUNK_OVERHEAD_BYTES: usize = 512;

/// Chunks per block. An agent subscribes to a module's chunks a block at a time, a few
/// blocks at once, so that the retained messages a broker sends for its subscriptions stay
/// within what it queues for one client: Mosquitto queues 1,000 by default
/// (`max_queued_messages`) and drops the rest, so a module of more chunks than that, or
/// several modules together, never arrived whole through one subscription.
pub const CHUNKS_PER_BLOCK: usize = 256;

/// The retained topic of `group`'s deployment document.
pub fn document_topic(prefix: &str, group: &str) -> String {
    format!("{prefix}/fleet/{group}/deployment")
}

/// The filter of the chunks of block `block` of the module with `sha256`.
pub fn block_filter(prefix: &str, group: &str, sha256: &str, block: usize) -> String {
    format!("{prefix}/fleet/{group}/module/{sha256}/{block}/+")
}

/// The retained topic of chunk `index` of the module with `sha256`.
pub fn chunk_topic(prefix: &str, group: &str, sha256: &str, index: usize) -> String {
    format!(
        "{prefix}/fleet/{group}/module/{sha256}/{}/{index}",
        index / CHUNKS_PER_BLOCK
    )
}

/// The module's SHA-256 and the chunk's index, if `topic` is a chunk topic of `group`
/// ([`chunk_topic`]).
pub fn parse_chunk_topic<'t>(
    prefix: &str,
    group: &str,
    topic: &'t str,
) -> Option<(&'t str, usize)> {
    let rest = topic
        .strip_prefix(prefix)?
        .strip_prefix("/fleet/")?
        .strip_prefix(group)?
        .strip_prefix("/module/")?;
    let mut parts = rest.split('/');
    let (sha, block, index) = (parts.next()?, parts.next()?, parts.next()?);
    let (block, index) = (block.parse::<usize>().ok()?, index.parse::<usize>().ok()?);
    (parts.next().is_none() && block == index / CHUNKS_PER_BLOCK).then_some((sha, index))
}

/// What a deployment puts in force on every agent of its group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The group of agents it is for (`[fleet] group`).
    pub group: String,
    /// Only ever increases: an agent applies a version once, and refuses an older one.
    pub version: u64,
    /// When it was signed, ms since the Unix epoch (informative).
    pub created_ms: u64,
    /// The functions, each a `[[function]]` table as in a config file (JSON here), whose
    /// `module` (and `shadow.module`) name a key of `modules`. They replace every
    /// `[[function]]` of the agent's config file; the other sections stay the agent's.
    pub functions: Vec<serde_json::Value>,
    /// The modules by file name.
    pub modules: BTreeMap<String, Module>,
}

/// A module of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Size of every chunk but the last, in bytes.
    pub chunk_bytes: u64,
    /// SHA-256 of each chunk in order, hex (empty when the module comes from `path`).
    pub chunks: Vec<String>,
    /// Where each device finds the file itself (put there by other means: a package, a
    /// share, a USB stick), instead of in chunks over MQTT; it is checked against
    /// `sha256` all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where each device fetches the file (`http://` or `https://`), instead of in chunks
    /// over MQTT; it is checked against `sha256` all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What travels on the document topic: the document's exact bytes and their signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The [`Document`] as JSON, signed as these bytes.
    pub document: String,
    /// The ed25519 signature of `document`, base64; none: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The public key that made it, base64 (it must be one the agent trusts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Why a deployment is refused: one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope, or its document not a document of this format.
    #[error("not a deployment: {0}")]
    Malformed(String),
    /// No signature.
    #[error("unsigned: a deployment must be signed with a trusted key (edge-agent deploy --key)")]
    Unsigned,
    /// The signature does not verify with a trusted key.
    #[error("wrongly signed: the signature does not verify with any key in [fleet] trusted_keys")]
    BadSignature,
    /// For another group (a document copied to the wrong topic).
    #[error("for group `{found}`, not this agent's `{ours}`")]
    OtherGroup {
        /// The document's.
        found: String,
        /// The agent's.
        ours: String,
    },
    /// Not newer than the last one this agent tried.
    #[error(
        "replayed or older: version {version} is not newer than version {last}, the last this agent tried"
    )]
    Old {
        /// The document's.
        version: u64,
        /// The last tried.
        last: u64,
    },
    /// A chunk or a whole module does not match its SHA-256.
    #[error("tampered module {module}: {what} does not match its sha256")]
    Tampered {
        /// The module's file name.
        module: String,
        /// `chunk N` or `the whole file`.
        what: String,
    },
    /// A module or chunk larger than the agent takes.
    #[error("module {module}: {why}")]
    TooLarge {
        /// The module's file name.
        module: String,
        /// Which limit.
        why: String,
    },
    /// A function names a module the document does not list.
    #[error("function `{function}` names module `{module}`, which the deployment does not carry")]
    UnknownModule {
        /// The function.
        function: String,
        /// The module it names.
        module: String,
    },
    /// A module to read from a path on the device that cannot be read there.
    #[error("module {module}: cannot read {path} from this device: {why}")]
    Unreadable {
        /// The module's file name.
        module: String,
        /// Where it was to be.
        path: String,
        /// Why not.
        why: String,
    },
    /// Modules did not arrive in time.
    #[error("module {module}: {have} of {want} chunks arrived in {secs} s")]
    Incomplete {
        /// The module's file name.
        module: String,
        /// Chunks received.
        have: usize,
        /// Chunks needed.
        want: usize,
        /// How long the agent waited.
        secs: u64,
    },
    /// A newer deployment came while this one's modules were arriving: that one is taken
    /// instead.
    #[error("superseded by version {0} before it was in force")]
    Superseded(u64),
    /// A staged module or the config file could not be written (a full disk, most often):
    /// nothing changed, and the deployment is tried again.
    #[error("cannot write {what}: {why}")]
    Storage {
        /// The module or file.
        what: String,
        /// The I/O error.
        why: String,
    },
    /// The config the deployment makes does not pass `edge-agent check`, or needs a
    /// restart: the reload's reason.
    #[error("does not pass check: {0}")]
    Check(String),
}

impl Refusal {
    /// Whether the same document may succeed later without a new version: modules that did
    /// not arrive or could not be fetched in time, or a disk that was full. The others are
    /// refused for good.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Incomplete { .. } | Self::Unreadable { .. } | Self::Storage { .. }
        )
    }
}

/// Why a text is not an ed25519 public key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not base64.
    #[error("not base64")]
    Base64(#[source] base64::DecodeError),
    /// Base64 of another length than 32 bytes.
    #[error("{0} bytes; an ed25519 public key has 32")]
    Length(usize),
}

/// A trusted public key from `[fleet] trusted_keys` (base64 of 32 bytes).
///
/// # Errors
/// [`KeyError`]: why the text is not an ed25519 public key.
pub fn parse_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(KeyError::Base64)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::Length(b.len()))
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl Module {
    /// The module `bytes` cut into chunks of `chunk_bytes` (the last may be shorter).
    pub fn of(bytes: &[u8], chunk_bytes: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        Self {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            chunk_bytes: chunk_bytes as u64,
            chunks: bytes.chunks(chunk_bytes).map(sha256_hex).collect(),
            path: None,
            url: None,
        }
    }

    /// The module `bytes`, which each device reads from `at`: a URL (`http://`,
    /// `https://`) to fetch, or else a path on the device (no chunks either way).
    pub fn at(bytes: &[u8], at: String) -> Self {
        let url = at.starts_with("http://") || at.starts_with("https://");
        Self {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            chunk_bytes: 0,
            chunks: Vec::new(),
            path: (!url).then(|| at.clone()),
            url: url.then_some(at),
        }
    }

    /// Checks that the chunk list fits the size (or that there is one path or URL
    /// instead).
    fn consistent(&self) -> bool {
        match (&self.path, &self.url) {
            (Some(_), Some(_)) => return false,
            (Some(_), None) | (None, Some(_)) => {
                return self.chunks.is_empty() && self.sha256.len() == 64;
            }
            (None, None) => {}
        }
        let want = if self.size == 0 || self.chunk_bytes == 0 {
            usize::from(self.size != 0)
        } else {
            self.size.div_ceil(self.chunk_bytes) as usize
        };
        self.chunk_bytes > 0 && self.chunks.len() == want && self.sha256.len() == 64
    }
}

impl Envelope {
    /// `document` signed with `sign` (which returns the signature of the bytes it is
    /// given) by the key whose public half is `public`.
    pub fn signed(document: &Document, public: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Self {
        let text = serde_json::to_string(document).unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            signature: Some(b64.encode(sign(text.as_bytes()))),
            key: Some(b64.encode(public)),
            document: text,
        }
    }

    /// Reads an envelope published on the document topic, checks its signature against
    /// `trusted`, and returns its document if it is for `group`.
    ///
    /// # Errors
    /// [`Refusal::Malformed`], [`Refusal::Unsigned`], [`Refusal::BadSignature`],
    /// [`Refusal::OtherGroup`], or a document whose modules are inconsistent or unknown.
    pub fn open(payload: &[u8], trusted: &[[u8; 32]], group: &str) -> Result<Document, Refusal> {
        let envelope: Self = serde_json::from_slice(payload)
            .map_err(|e| Refusal::Malformed(format!("the envelope: {e}")))?;
        // An empty signature is none (it was told as "wrongly signed" until 2026-12-08).
        let Some(signature) = envelope.signature.as_ref().filter(|s| !s.is_empty()) else {
            return Err(Refusal::Unsigned);
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let signature = b64.decode(signature).map_err(|_| Refusal::BadSignature)?;
        // With a key named, only that key (if trusted); without, any trusted key.
        let named = envelope.key.as_deref().and_then(|k| parse_key(k).ok());
        let verifies = trusted
            .iter()
            .filter(|k| named.is_none_or(|n| n == **k))
            .any(|k| {
                UnparsedPublicKey::new(&ED25519, k)
                    .verify(envelope.document.as_bytes(), &signature)
                    .is_ok()
            });
        if !verifies {
            return Err(Refusal::BadSignature);
        }
        let value: serde_json::Value = serde_json::from_str(&envelope.document)
            .map_err(|e| Refusal::Malformed(format!("the document: {e}")))?;
        let found = crate::messages::schema_version(&value);
        if found != SCHEMA_VERSION {
            return Err(Refusal::Malformed(format!(
                "document in schema_version {found}; this build reads {SCHEMA_VERSION}"
            )));
        }
        let document: Document = serde_json::from_value(value)
            .map_err(|e| Refusal::Malformed(format!("the document: {e}")))?;
        if document.group != group {
            return Err(Refusal::OtherGroup {
                found: document.group,
                ours: group.to_string(),
            });
        }
        document.check_modules()?;
        Ok(document)
    }
}

impl Document {
    /// Every module consistent, and every module a function names carried.
    fn check_modules(&self) -> Result<(), Refusal> {
        for (name, m) in &self.modules {
            if !m.consistent() || name.contains('/') || name.starts_with('.') {
                return Err(Refusal::Malformed(format!(
                    "module {name}: its size, chunk size and chunk list do not fit"
                )));
            }
        }
        for f in &self.functions {
            let function = f.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            for module in module_names(f) {
                if !self.modules.contains_key(module) {
                    return Err(Refusal::UnknownModule {
                        function: function.to_string(),
                        module: module.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The SHA-256 of the document's functions and modules: equal for two documents that
    /// put the same things in force.
    pub fn digest(&self) -> String {
        sha256_hex(
            serde_json::to_string(&(&self.functions, &self.modules))
                .unwrap_or_default()
                .as_bytes(),
        )
    }
}

/// The module names a function table uses: its `module`, and its shadow's.
pub fn module_names(function: &serde_json::Value) -> Vec<&str> {
    [
        function.get("module"),
        function.get("shadow").and_then(|s| s.get("module")),
    ]
    .into_iter()
    .flatten()
    .filter_map(serde_json::Value::as_str)
    .collect()
}

/// A module being received chunk by chunk, each checked on arrival. It keeps which chunks
/// are in, not their bytes: the receiver writes each new chunk where [`Assembly::add`]
/// says, so that a module never has to fit in memory whole.
#[derive(Debug)]
pub struct Assembly {
    name: String,
    module: Module,
    have: Vec<bool>,
    count: usize,
}

impl Assembly {
    /// Waits for `module`'s chunks.
    pub fn new(name: &str, module: &Module) -> Self {
        Self {
            name: name.to_string(),
            module: module.clone(),
            have: vec![false; module.chunks.len()],
            count: 0,
        }
    }

    /// The module's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Chunks received and needed.
    pub fn progress(&self) -> (usize, usize) {
        (self.count, self.have.len())
    }

    /// How many blocks of chunks the module has ([`CHUNKS_PER_BLOCK`]).
    pub fn blocks(&self) -> usize {
        self.have.len().div_ceil(CHUNKS_PER_BLOCK)
    }

    /// Whether every chunk of block `block` is in.
    pub fn has_block(&self, block: usize) -> bool {
        let start = (block * CHUNKS_PER_BLOCK).min(self.have.len());
        let end = ((block + 1) * CHUNKS_PER_BLOCK).min(self.have.len());
        self.have[start..end].iter().all(|h| *h)
    }

    /// Whether every chunk is in.
    pub fn complete(&self) -> bool {
        self.count == self.have.len()
    }

    /// Takes chunk `index`: the offset in the file to write it at if it is new; `None` for
    /// a repeat of one already in, or for an index past the last (left retained by an
    /// earlier deployment of the same module in smaller chunks).
    ///
    /// # Errors
    /// [`Refusal::Tampered`] if the chunk does not match its SHA-256.
    pub fn add(&mut self, index: usize, bytes: &[u8]) -> Result<Option<u64>, Refusal> {
        let Some(want) = self.module.chunks.get(index) else {
            return Ok(None);
        };
        if sha256_hex(bytes) != *want {
            return Err(Refusal::Tampered {
                module: self.name.clone(),
                what: format!("chunk {index}"),
            });
        }
        if self.have[index] {
            return Ok(None);
        }
        self.have[index] = true;
        self.count += 1;
        Ok(Some(index as u64 * self.module.chunk_bytes))
    }

    /// Checks the whole file, given its size and SHA-256 as written.
    ///
    /// # Errors
    /// [`Refusal::Incomplete`] without every chunk (`secs` 0), [`Refusal::Tampered`] if
    /// the whole does not match.
    pub fn finish(self, size: u64, sha256: &str) -> Result<(), Refusal> {
        if !self.complete() {
            return Err(Refusal::Incomplete {
                module: self.name,
                have: self.count,
                want: self.have.len(),
                secs: 0,
            });
        }
        if size != self.module.size || sha256 != self.module.sha256 {
            return Err(Refusal::Tampered {
                module: self.name,
                what: "the whole file".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    fn pair(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a key")
    }

    fn document(module: &[u8]) -> Document {
        Document {
            schema_version: SCHEMA_VERSION,
            group: "g".into(),
            version: 3,
            created_ms: 0,
            functions: vec![serde_json::json!({"name": "f", "module": "f.wasm", "topics": ["t"]})],
            modules: [("f.wasm".to_string(), Module::of(module, 4))].into(),
        }
    }

    fn sealed(doc: &Document, key: &Ed25519KeyPair) -> Vec<u8> {
        let e = Envelope::signed(doc, key.public_key().as_ref(), |b| {
            key.sign(b).as_ref().to_vec()
        });
        serde_json::to_vec(&e).expect("json")
    }

    fn public(key: &Ed25519KeyPair) -> [u8; 32] {
        key.public_key().as_ref().try_into().expect("32 bytes")
    }

    #[test]
    fn only_a_document_signed_by_a_trusted_key_opens() {
        let (ops, other) = (pair(1), pair(2));
        let doc = document(b"0123456789");
        let trusted = [public(&ops)];
        assert_eq!(
            Envelope::open(&sealed(&doc, &ops), &trusted, "g"),
            Ok(doc.clone())
        );
        let by_other = sealed(&doc, &other);
        assert_eq!(
            Envelope::open(&by_other, &trusted, "g"),
            Err(Refusal::BadSignature)
        );
        // The signed bytes changed after signing (a function added, the version raised).
        let mut e: Envelope = serde_json::from_slice(&sealed(&doc, &ops)).expect("json");
        e.document = e.document.replace("\"version\":3", "\"version\":4");
        let forged = serde_json::to_vec(&e).expect("json");
        assert_eq!(
            Envelope::open(&forged, &trusted, "g"),
            Err(Refusal::BadSignature)
        );
        // A trusted key's signature with another key named is not taken either.
        e = serde_json::from_slice(&sealed(&doc, &ops)).expect("json");
        e.key = Some(base64::engine::general_purpose::STANDARD.encode(public(&other)));
        let renamed = serde_json::to_vec(&e).expect("json");
        assert_eq!(
            Envelope::open(&renamed, &trusted, "g"),
            Err(Refusal::BadSignature)
        );
        e.signature = None;
        let unsigned = serde_json::to_vec(&e).expect("json");
        assert_eq!(
            Envelope::open(&unsigned, &trusted, "g"),
            Err(Refusal::Unsigned)
        );
        e.signature = Some(String::new());
        let empty = serde_json::to_vec(&e).expect("json");
        assert_eq!(
            Envelope::open(&empty, &trusted, "g"),
            Err(Refusal::Unsigned)
        );
        let err = Envelope::open(&sealed(&doc, &ops), &trusted, "h").unwrap_err();
        assert_eq!(err.to_string(), "for group `g`, not this agent's `h`");
        assert!(matches!(
            Envelope::open(b"{", &trusted, "g"),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn a_module_comes_together_only_from_its_own_chunks() {
        let bytes = b"0123456789";
        let m = Module::of(bytes, 4);
        assert_eq!(m.chunks.len(), 3);
        let mut a = Assembly::new("f.wasm", &m);
        assert_eq!(
            a.add(2, b"89"),
            Ok(Some(8)),
            "the last chunk, at its offset"
        );
        assert_eq!(
            a.add(0, b"0124").unwrap_err().to_string(),
            "tampered module f.wasm: chunk 0 does not match its sha256"
        );
        assert_eq!(
            a.add(7, b"x"),
            Ok(None),
            "a chunk past the last is left over, not wrong"
        );
        assert_eq!(a.add(0, b"0123"), Ok(Some(0)));
        assert_eq!(a.add(0, b"0123"), Ok(None), "a repeat");
        assert_eq!(a.progress(), (2, 3));
        a.add(1, b"4567").expect("chunk 1");
        assert!(a.complete());
        let whole = sha256_hex(bytes);
        Assembly::new("f.wasm", &m)
            .finish(10, &whole)
            .expect_err("nothing in yet");
        let mut b = Assembly::new("f.wasm", &m);
        for (i, c) in bytes.chunks(4).enumerate() {
            b.add(i, c).expect("a chunk");
        }
        assert!(matches!(
            b.finish(10, &"0".repeat(64)),
            Err(Refusal::Tampered { .. })
        ));
        a.finish(10, &whole).expect("whole");
    }

    #[test]
    fn chunks_travel_in_blocks_that_a_broker_queues_whole() {
        let sha = "ab".repeat(32);
        let t = chunk_topic("ea", "site", &sha, 300);
        assert_eq!(t, format!("ea/fleet/site/module/{sha}/1/300"));
        assert_eq!(
            parse_chunk_topic("ea", "site", &t),
            Some((sha.as_str(), 300))
        );
        assert!(crate::topic::matches(
            &block_filter("ea", "site", &sha, 1),
            &t
        ));
        for wrong in [
            format!("ea/fleet/site/module/{sha}/0/300"),
            format!("ea/fleet/site/module/{sha}/300"),
            format!("ea/fleet/other/module/{sha}/1/300"),
            format!("ea/fleet/site/module/{sha}/1/300/x"),
        ] {
            assert_eq!(parse_chunk_topic("ea", "site", &wrong), None, "{wrong}");
        }
        let bytes = vec![7u8; CHUNKS_PER_BLOCK + 1];
        let m = Module::of(&bytes, 1);
        let mut a = Assembly::new("f.wasm", &m);
        assert_eq!(a.blocks(), 2);
        a.add(CHUNKS_PER_BLOCK, &[7]).expect("the last chunk");
        assert!(a.has_block(1) && !a.has_block(0));
        for i in 0..CHUNKS_PER_BLOCK {
            a.add(i, &[7]).expect("a chunk");
        }
        assert!(a.has_block(0) && a.complete());
    }

    #[test]
    fn a_function_must_name_a_module_the_document_carries() {
        let ops = pair(1);
        let mut doc = document(b"x");
        doc.functions[0]["shadow"] = serde_json::json!({"module": "g.wasm"});
        let err = Envelope::open(&sealed(&doc, &ops), &[public(&ops)], "g").unwrap_err();
        assert!(matches!(err, Refusal::UnknownModule { .. }), "{err}");
        let mut doc = document(b"x");
        doc.modules
            .get_mut("f.wasm")
            .expect("f")
            .chunks
            .push("0".repeat(64));
        let err = Envelope::open(&sealed(&doc, &ops), &[public(&ops)], "g").unwrap_err();
        assert!(matches!(err, Refusal::Malformed(_)), "{err}");
    }

    #[test]
    fn a_module_comes_from_chunks_a_path_or_a_url_and_only_one() {
        let url = Module::at(b"x", "https://files.example/v2/f.wasm".into());
        assert_eq!(url.url.as_deref(), Some("https://files.example/v2/f.wasm"));
        assert!(url.path.is_none() && url.consistent());
        let path = Module::at(b"x", "/opt/modules/f.wasm".into());
        assert_eq!(path.path.as_deref(), Some("/opt/modules/f.wasm"));
        assert!(path.url.is_none() && path.consistent());
        let both = Module {
            path: Some("/opt/f.wasm".into()),
            ..url.clone()
        };
        assert!(!both.consistent(), "a path and a URL");
        let chunks_too = Module {
            chunks: vec!["0".repeat(64)],
            ..url
        };
        assert!(!chunks_too.consistent(), "a URL and chunks");
    }
}
