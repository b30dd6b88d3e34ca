//! Small deterministic images (OCI or Docker schema 2, single or multi-platform), and a
//! pusher that uploads them through a registry's plain-HTTP front.

use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// For a layer: the digest of its uncompressed tar (what the image config lists).
    pub diff_id: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Blob {
        let digest = sha256(&bytes);
        Blob {
            diff_id: digest.clone(),
            digest,
            bytes,
            media_type: media_type.into(),
        }
    }
    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// A single-platform image: config, layers, and the manifest bytes exactly as pushed.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
    pub arch: String,
}

impl Image {
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().map(|b| b.bytes.len() as u64).sum()
    }
}

/// An image whose layers are `layers` (given as blobs, so that images can share them).
pub fn image_with(layers: Vec<Blob>, arch: &str, docker: bool) -> Image {
    image_with_config(layers, arch, docker, json!({"Cmd": ["/bin/true"]}))
}

/// An image with `run` as the `config` section of its image config (Entrypoint, Cmd, Env,
/// WorkingDir, User).
pub fn image_with_config(
    layers: Vec<Blob>,
    arch: &str,
    docker: bool,
    run: serde_json::Value,
) -> Image {
    let (mt, cfg_mt) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json")
    };
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = Blob::new(
        serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap(),
        cfg_mt,
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Image {
        manifest: Blob::new(serde_json::to_vec_pretty(&manifest).unwrap(), mt),
        config,
        layers,
        arch: arch.into(),
    }
}

/// A gzip-layer blob of about `size` bytes: a tar holding one file of pseudo-random
/// (incompressible) content, in a valid gzip stream of stored deflate blocks, as real images
/// carry incompressible layers.
pub fn layer(seed: u64, size: usize, docker: bool) -> Blob {
    let mt = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    let data = random_bytes(seed, size.saturating_sub(1536));
    let tar = tar_of(&[(&format!("layer-{seed}/data"), &data)]);
    layer_of(&tar, mt)
}

/// A layer blob of `media_type` whose uncompressed stream is `tar` (gzip: stored blocks).
pub fn layer_of(tar: &[u8], media_type: &str) -> Blob {
    let bytes = if media_type.ends_with("gzip") {
        gzip_stored(tar)
    } else {
        tar.to_vec()
    };
    let mut b = Blob::new(bytes, media_type);
    b.diff_id = sha256(tar);
    b
}

/// A tar of regular files (mode 0644, root-owned), ended by two zero blocks.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// gzip with stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

pub fn image(seed: u64, sizes: &[usize], arch: &str, docker: bool) -> Image {
    let layers = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| layer(seed * 1000 + i as u64, *s, docker))
        .collect();
    image_with(layers, arch, docker)
}

/// An index (or Docker manifest list) over `images`, each with (os, arch, variant).
pub fn index(images: &[(&Image, &str, Option<&str>)], docker: bool) -> Blob {
    let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(img, arch, variant)| {
            let mut p = json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = json!(v);
            }
            let mut d = img.manifest.descriptor();
            d["platform"] = p;
            d
        })
        .collect();
    Blob::new(
        serde_json::to_vec_pretty(
            &json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}),
        )
        .unwrap(),
        mt,
    )
}

pub struct Pusher {
    client: reqwest::Client,
    base: String,
}

impl Pusher {
    /// Pushes through `addr` (a plain-HTTP, unauthenticated front).
    pub fn new(addr: &str) -> Pusher {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Pusher {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn blob(&self, repo: &str, blob: &Blob) {
        let head = self
            .client
            .head(format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest))
            .send()
            .await
            .unwrap();
        if head.status().is_success() {
            return;
        }
        let start = self
            .client
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status().as_u16(), 202, "start upload");
        let loc = start.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self
            .client
            .put(format!("{loc}{sep}digest={}", blob.digest))
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            put.status().as_u16(),
            201,
            "finish upload: {}",
            put.text().await.unwrap()
        );
    }

    pub async fn manifest(&self, repo: &str, reference: &str, m: &Blob) {
        let r = self
            .client
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", &m.media_type)
            .body(m.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "put manifest: {}",
            r.text().await.unwrap()
        );
    }

    pub async fn image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.blobs() {
            self.blob(repo, b).await;
        }
        self.manifest(repo, tag, &img.manifest).await;
    }

    pub async fn index(&self, repo: &str, tag: &str, images: &[&Image], index: &Blob) {
        for img in images {
            for b in img.blobs() {
                self.blob(repo, b).await;
            }
            self.manifest(repo, &img.manifest.digest, &img.manifest)
                .await;
        }
        self.manifest(repo, tag, index).await;
    }
}

/// Runs an async block to completion (tests are sync; pushes are async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
