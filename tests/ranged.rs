//! SPEC §13: a blob larger than `--layer-chunk-size` comes in chunks over parallel `Range`
//! requests, through a front in front of a real registry that records every request and
//! misbehaves on demand: the same blob and layer as one stream, a registry that ignores
//! ranges, a chunk answered with another range, corrupted bytes, `kill -9` mid-fetch.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fault::{Fault, FaultEnv, FaultServer, Rule, rule};
use common::images::{image, sha256};
use common::proxy::ConnThrottle;
use common::reference::describe_tree;
use common::{Root, agent, run};

/// 4 MiB chunks: a 22 MB layer is six of them.
const CHUNK: u64 = 4 << 20;
const CHUNK_ARG: &str = "4194304";
const LAYER: usize = 22_000_000;

/// A registry holding a one-layer image of `LAYER` bytes (incompressible) as `big/app:v1`.
fn big_image() -> FaultEnv {
    FaultEnv::start(image(25, &[LAYER], "amd64", false), &["big/app"])
}

/// Asked `spans` (sorted) are pieces of the blob's bytes `from..to`: together all of them,
/// each within one chunk of `chunk` bytes, each starting at a chunk's start, at `from`, or on
/// a MiB boundary (the second half of a piece a free connection took over).
fn assert_pieces(spans: &[(u64, u64)], from: u64, to: u64, chunk: u64) {
    assert_eq!(spans[0].0, from, "{spans:?}");
    let mut covered = from;
    for &(a, b) in spans {
        assert!(a <= covered, "a gap before {a}: {spans:?}");
        covered = covered.max(b + 1);
        assert_eq!(a / chunk, b / chunk, "across chunks: {spans:?}");
        assert!(
            a % chunk == 0 || a == from || a % (1 << 20) == 0,
            "{a}: {spans:?}"
        );
    }
    assert_eq!(covered, to, "{spans:?}");
}

/// `pull` of the image through `front` into a root of its own with `extra` flags, over a link
/// of 10 MB/s per connection (a CDN's cap): slower than a 4 MiB chunk in the stream's first
/// 250 ms, so the rest comes in chunks.
fn pull(front: &FaultServer, extra: &[&str]) -> (Root, common::Run) {
    let link = ConnThrottle::start(&front.addr(), 10_000_000, 1_000_000_000_000);
    pull_via(&link.addr(), extra)
}

/// `pull` of `<reg>/big/app:v1` into a root of its own (in chunks of `CHUNK` unless `extra` says).
fn pull_via(reg: &str, extra: &[&str]) -> (Root, common::Run) {
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let image = format!("{reg}/big/app:v1");
    let mut args = vec!["pull", "--root", root.arg(), "--http-registry", reg];
    if !extra.contains(&"--layer-chunk-size") {
        args.extend(["--layer-chunk-size", CHUNK_ARG]);
    }
    args.extend_from_slice(extra);
    args.push(&image);
    let r = run(&mut agent(&args));
    (root, r)
}

/// The byte ranges `(start, end)` (inclusive) of `asked`, sorted.
fn spans(asked: &[String]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = asked
        .iter()
        .map(|r| {
            let (a, b) = r.trim_start_matches("bytes=").split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The `Range` of every GET of the layer blob seen by `front` (after its first `from`
/// requests); `None` for a GET without one.
fn ranges(front: &FaultServer, digest: &str, from: usize) -> Vec<Option<String>> {
    front
        .seen()
        .iter()
        .skip(from)
        .filter(|s| s.method == "GET" && s.path.contains(digest))
        .map(|s| s.range.clone())
        .collect()
}

fn blob_path(root: &Root, digest: &str) -> PathBuf {
    root.file("var/lib/kci/images/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn layer_tree(root: &Root) -> (std::collections::BTreeMap<String, String>, Vec<Vec<String>>) {
    let dir = root.file("var/lib/kci/layers/sha256");
    let layer = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    describe_tree(&layer.join("fs"), true)
}

/// The blob is in `blobs/` with its digest, and nothing of it is left in `ingest/`.
fn assert_stored(root: &Root, digest: &str) {
    assert_eq!(sha256(&fs::read(blob_path(root, digest)).unwrap()), digest);
    assert!(ingest_left(root).is_empty(), "{:?}", ingest_left(root));
}

fn ingest_left(root: &Root) -> Vec<String> {
    fs::read_dir(root.file("var/lib/kci/images/ingest"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A fast link: one stream, no range, whatever the blob's size (nothing changes for it).
#[test]
fn a_fast_link_keeps_one_stream() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let front = e.front(Vec::new());
    let (root, r) = pull_via(&front.addr(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ranges(&front, &digest, 0), vec![None]);
    assert!(ingest_left(&root).is_empty());
}

/// A link that caps each connection: the stream's first bytes, then the rest in pieces of
/// chunks, together the whole blob; the blob and the unpacked layer the same as one stream's.
#[test]
fn a_capped_link_goes_on_in_ranges_and_equals_one_stream() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let size = e.img.layers[0].bytes.len() as u64;
    let front = e.front(Vec::new());
    let (chunked, r) = pull(&front, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let asked = ranges(&front, &digest, 0);
    assert_eq!(asked[0], None, "the stream first");
    let asked: Vec<String> = asked[1..]
        .iter()
        .map(|r| r.clone().expect("then every GET has a Range"))
        .collect();
    let spans = spans(&asked);
    assert!(spans.len() >= 4, "{spans:?}");
    let handed = spans[0].0;
    assert!(
        handed > 0 && handed < CHUNK,
        "the stream brought less than a chunk: {spans:?}"
    );
    assert_pieces(&spans, handed, size, CHUNK);

    let before = front.seen().len();
    let (stream, r) = pull(&front, &["--layer-connections", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ranges(&front, &digest, before), vec![None], "one stream");
    let bytes = fs::read(blob_path(&chunked, &digest)).unwrap();
    assert_eq!(sha256(&bytes), digest);
    assert_eq!(bytes, fs::read(blob_path(&stream, &digest)).unwrap());
    assert_eq!(layer_tree(&chunked), layer_tree(&stream));
    assert!(ingest_left(&chunked).is_empty());
}

/// Chunks of 8 MiB, fewer than the connections: the free connections take the second half of
/// the pieces in flight instead of waiting, and the blob is the same.
#[test]
fn free_connections_take_over_the_end_of_long_pieces() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let size = e.img.layers[0].bytes.len() as u64;
    let front = e.front(Vec::new());
    let (root, r) = pull(&front, &["--layer-chunk-size", "8388608"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Right the first time: a byte hashed twice or missed would have made it fetch again.
    assert!(!r.stderr.contains("downloading it again"), "{}", r.stderr);
    let asked = ranges(&front, &digest, 0);
    assert_eq!(asked[0], None, "the stream first");
    let spans = spans(&asked[1..].iter().flatten().cloned().collect::<Vec<_>>());
    let handed = spans[0].0;
    let chunk = 8u64 << 20;
    assert_pieces(&spans, handed, size, chunk);
    assert!(
        spans.iter().any(|s| s.0 % chunk != 0 && s.0 != handed),
        "no piece was split: {spans:?}"
    );
    assert_stored(&root, &digest);
}

/// A front that drops the `Range` of every request: the chunked fetch finds out at its first
/// chunk and the blob comes as one stream.
#[test]
fn a_registry_that_ignores_ranges_is_used_as_one_stream() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let front = e.front(vec![rule(&digest, Fault::IgnoreRange, 1000)]);
    let (root, r) = pull(&front, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("one stream"), "{}", r.stderr);
    assert_stored(&root, &digest);
}

/// One chunk answered with another Content-Range (a broken cache in between): that chunk is
/// asked again, no other.
#[test]
fn a_chunk_answered_with_another_range_is_retried_alone() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    // The blob's HEAD, its stream's GET (a 200: the header means nothing there), then the
    // first chunk's GET.
    let front = e.front(vec![rule(
        &digest,
        Fault::Header {
            name: "Content-Range".into(),
            value: "bytes 0-1/2".into(),
        },
        3,
    )]);
    let (root, r) = pull(&front, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("Content-Range"), "{}", r.stderr);
    let asked: Vec<String> = ranges(&front, &digest, 0).into_iter().flatten().collect();
    // Pieces start at distinct offsets: only a retry asks from the same byte again. The
    // first chunk's answer was the wrong one; it is asked again (up to the same end, or less
    // if a free connection took the end of it meanwhile), and no other.
    let spans: Vec<(u64, u64)> = asked
        .iter()
        .map(|r| spans(std::slice::from_ref(r))[0])
        .collect();
    let (a, b) = spans[0];
    let again: Vec<_> = spans[1..].iter().filter(|s| s.0 == a).collect();
    assert_eq!(again.len(), 1, "asked again once: {asked:?}");
    assert!(again[0].1 <= b, "{asked:?}");
    let mut starts: Vec<u64> = spans.iter().map(|s| s.0).collect();
    starts.sort();
    starts.dedup();
    assert_eq!(
        starts.len(),
        spans.len() - 1,
        "no other piece asked again: {asked:?}"
    );
    assert_stored(&root, &digest);
}

/// Flipped bytes in one chunk are found by the blob's digest: the blob is fetched once more
/// (every chunk), and a registry whose every answer is corrupt fails the image with nothing
/// stored: no blob, no chunk file, no layer.
#[test]
fn corrupted_bytes_are_fetched_again_once_then_nothing_is_stored() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let size = e.img.layers[0].bytes.len() as u64;
    let chunks = size.div_ceil(CHUNK) as usize;
    // The HEAD, then the stream's first bytes.
    let front = e.front(vec![rule(&digest, Fault::Corrupt { offset: 1000 }, 2)]);
    let (root, r) = pull(&front, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("downloading it again"), "{}", r.stderr);
    let asked = ranges(&front, &digest, 0);
    assert_eq!(
        asked.iter().filter(|r| r.is_none()).count(),
        2,
        "two streams: {asked:?}"
    );
    assert!(asked.len() > chunks, "{asked:?}");
    assert_stored(&root, &digest);

    let front = e.front(vec![rule(&digest, Fault::Corrupt { offset: 1000 }, 10_000)]);
    let (root, r) = pull(&front, &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!blob_path(&root, &digest).exists());
    assert!(ingest_left(&root).is_empty(), "{:?}", ingest_left(&root));
    let layers = root.file("var/lib/kci/layers/sha256");
    assert_eq!(fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0), 0);
}

/// SPEC §9, a hostile store: links planted where the chunked fetch keeps its data and its map
/// (`ingest/<hex>.chunks`, `.chunks.map`), pointing at files outside, one of them a map that
/// lists every chunk as done and the other of the blob's size. Neither is followed: the files
/// outside are unchanged, the blob is fetched and right, nothing is left in `ingest/`.
#[test]
fn links_planted_as_chunk_files_are_not_followed() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let size = e.img.layers[0].bytes.len() as u64;
    let hex = digest.trim_start_matches("sha256:").to_string();
    let front = e.front(Vec::new());
    let link = ConnThrottle::start(&front.addr(), 10_000_000, 1_000_000_000_000);
    let reg = link.addr();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let outside = tempfile::tempdir().unwrap();
    let victim_data = outside.path().join("data");
    let victim_map = outside.path().join("map");
    fs::write(&victim_data, vec![0u8; size as usize]).unwrap();
    let chunks = size.div_ceil(CHUNK);
    let map: String = std::iter::once(format!("kci-chunks 1 {size} {CHUNK}\n"))
        .chain((0..chunks).map(|i| format!("{i}\n")))
        .collect();
    fs::write(&victim_map, &map).unwrap();
    let ingest = root.file("var/lib/kci/images/ingest");
    fs::create_dir_all(&ingest).unwrap();
    std::os::unix::fs::symlink(&victim_data, ingest.join(format!("{hex}.chunks"))).unwrap();
    std::os::unix::fs::symlink(&victim_map, ingest.join(format!("{hex}.chunks.map"))).unwrap();
    let image = format!("{reg}/big/app:v1");
    let r = run(&mut agent(&[
        "pull",
        "--root",
        root.arg(),
        "--http-registry",
        &reg,
        "--layer-chunk-size",
        CHUNK_ARG,
        &image,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Neither link was taken for kept chunks (they would be resumed, then found wrong).
    assert!(!r.stderr.contains("resuming"), "{}", r.stderr);
    assert!(!r.stderr.contains("downloading it again"), "{}", r.stderr);
    assert!(
        ranges(&front, &digest, 0).iter().any(Option::is_some),
        "the fetch went on in chunks"
    );
    assert!(
        fs::read(&victim_data).unwrap() == vec![0u8; size as usize],
        "the data file outside was written"
    );
    assert_eq!(fs::read_to_string(&victim_map).unwrap(), map);
    assert_stored(&root, &digest);
}

/// `kill -9` while the chunks arrive: the next run fetches only the chunks the map does not
/// list as complete, and the blob is whole.
#[test]
fn kill_9_mid_fetch_then_the_next_run_resumes_from_the_disk() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let size = e.img.layers[0].bytes.len() as u64;
    // Each chunk at 2 MB/s: about 2 s per chunk.
    let front = e.front(vec![Rule {
        path_contains: digest.clone(),
        fault: Fault::Trickle {
            bytes_per_sec: 2_000_000,
        },
        times: 1000,
    }]);
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let reg = front.addr();
    let image = format!("{reg}/big/app:v1");
    let args = [
        "pull",
        "--root",
        root.arg(),
        "--http-registry",
        &reg,
        "--layer-chunk-size",
        CHUNK_ARG,
        "--layer-connections",
        "2",
        &image,
    ];
    let mut child = agent(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let map = root.file("var/lib/kci/images/ingest").join(format!(
        "{}.chunks.map",
        digest.trim_start_matches("sha256:")
    ));
    let listed = |p: &Path| {
        fs::read_to_string(p)
            .map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while listed(&map).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done: Vec<u64> = listed(&map).iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        done.len() >= 2,
        "two chunks complete before the kill: {done:?}"
    );
    assert!((done.len() as u64) < size.div_ceil(CHUNK), "{done:?}");

    let quick = e.front(Vec::new());
    let reg2 = quick.addr();
    let image2 = format!("{reg2}/big/app:v1");
    let args2 = [
        "pull",
        "--root",
        root.arg(),
        "--http-registry",
        &reg2,
        "--layer-chunk-size",
        CHUNK_ARG,
        &image2,
    ];
    let r = run(&mut agent(&args2));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("resuming a chunked download"),
        "{}",
        r.stderr
    );
    // No byte of a chunk on disk is asked again; every byte of the others is.
    let asked = spans(
        &ranges(&quick, &digest, 0)
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
    );
    let on_disk = |at: u64| done.contains(&(at / CHUNK));
    for &(a, b) in &asked {
        assert_eq!(a / CHUNK, b / CHUNK, "{asked:?}");
        assert!(
            !on_disk(a),
            "chunk {} was on disk, yet asked again: {asked:?}",
            a / CHUNK
        );
    }
    for i in (0..size.div_ceil(CHUNK)).filter(|i| !done.contains(i)) {
        let (start, end) = (i * CHUNK, ((i + 1) * CHUNK).min(size));
        // Each missing chunk asked whole, in pieces (asked is sorted).
        let pieces: Vec<_> = asked
            .iter()
            .copied()
            .filter(|s| s.0 >= start && s.1 < end)
            .collect();
        assert!(
            !pieces.is_empty(),
            "chunk {i} was missing, yet not asked: {asked:?}"
        );
        assert_pieces(&pieces, start, end, CHUNK);
    }
    assert_stored(&root, &digest);
}

/// A registry that answers a chunk with more bytes than the range asked: refused as wrong
/// content, the image fails, nothing of the blob is in the store.
#[test]
fn a_chunk_longer_than_its_range_is_refused() {
    let e = big_image();
    let digest = e.img.layers[0].digest.clone();
    let front = e.front(vec![rule(&digest, Fault::Extra { extra: 100 }, 10_000)]);
    let (root, r) = pull(&front, &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("more than the bytes")
            || r.stderr.contains("larger than its declared size"),
        "{}",
        r.stderr
    );
    assert!(
        ranges(&front, &digest, 0).iter().any(Option::is_some),
        "chunks were asked"
    );
    assert!(!blob_path(&root, &digest).exists());
}
