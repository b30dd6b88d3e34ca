//! The tar reader against crafted headers and against what GNU tar writes.
use super::*;
use crate::layers::extract::tests::{dir, entry, file, pax, tar};

fn all(bytes: &[u8]) -> io::Result<Vec<(Header, Vec<u8>)>> {
    let mut a = Archive::new(bytes);
    let mut out = Vec::new();
    while let Some(h) = a.next_entry()? {
        let mut data = Vec::new();
        a.data().read_to_end(&mut data)?;
        out.push((h, data));
    }
    Ok(out)
}

/// A PAX header of records whose keys need not be UTF-8.
fn pax_bytes(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while format!("{len}").len() + body != len {
            len = format!("{len}").len() + body;
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(k);
        data.push(b'=');
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    entry(b"PaxHeader", b'x', &data, b"", 0o644, (0, 0))
}

/// Sets a header's numeric field to `bytes` and fixes its checksum.
fn patch(block: &mut [u8], at: usize, bytes: &[u8]) {
    block[at..at + bytes.len()].copy_from_slice(bytes);
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block[..512].iter().map(|b| *b as u32).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn names_from_prefix_gnu_long_names_and_pax_records() {
    let mut prefixed = file("name", b"x");
    patch(&mut prefixed, 345, b"some/prefix");
    let long = "l/".repeat(200) + "end";
    let layer = tar(&[
        prefixed,
        entry(b"././@LongLink", b'L', long.as_bytes(), b"", 0o644, (0, 0)),
        file("short", b"y"),
        entry(
            b"././@LongLink",
            b'K',
            b"far/target\0junk",
            b"",
            0o644,
            (0, 0),
        ),
        entry(b"sym", b'2', b"", b"near", 0o777, (0, 0)),
        pax_bytes(&[
            (b"path", b"pax/path"),
            (b"mtime", b"1700000000.123456789123"),
            (b"uid", b"4242"),
            (b"SCHILY.xattr.user.\xff", b"bin\0ary"),
        ]),
        file("ustar-name", b"z"),
        entry(
            b"pax_global_header",
            b'g',
            b"19 path=ignored/me\n",
            b"",
            0o644,
            (0, 0),
        ),
        file("after-global", b""),
    ]);
    let got = all(&layer).unwrap();
    let names: Vec<&[u8]> = got.iter().map(|(h, _)| h.path.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"some/prefix/name"[..],
            long.as_bytes(),
            b"sym",
            b"pax/path",
            b"after-global"
        ]
    );
    assert_eq!(got[1].1, b"y");
    assert_eq!(got[2].0.link, b"far/target");
    let p = &got[3].0;
    assert_eq!(p.mtime, (1_700_000_000, 123_456_789));
    assert_eq!(p.uid, 4242);
    assert_eq!(
        p.xattrs,
        vec![(b"user.\xff".to_vec(), b"bin\0ary".to_vec())]
    );
    assert_eq!(got[3].1, b"z");
    // A PAX record applies to one entry only.
    assert_eq!(got[4].0.uid, 0);
    assert_eq!(got[4].0.mtime, (1_700_000_000, 0));
}

#[test]
fn times_before_the_epoch_in_base_256_and_in_pax() {
    let mut f = file("old", b"");
    // -1 in base-256: 0xff...ff.
    patch(&mut f, 136, &[0xff; 12]);
    let mut g = file("older", b"");
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[4..].copy_from_slice(&(-86_400i64 * 365).to_be_bytes());
    field[0] = 0xff;
    field[1..4].copy_from_slice(&[0xff; 3]);
    patch(&mut g, 136, &field);
    let layer = tar(&[
        f,
        g,
        pax(&[("mtime", b"-1.25")]),
        file("pax-old", b""),
        pax(&[("mtime", b"-0.5")]),
        file("pax-half", b""),
    ]);
    let got = all(&layer).unwrap();
    assert_eq!(got[0].0.mtime, (-1, 0));
    assert_eq!(got[1].0.mtime, (-86_400 * 365, 0));
    assert_eq!(got[2].0.mtime, (-2, 750_000_000));
    assert_eq!(got[3].0.mtime, (-1, 500_000_000));
}

/// A directory, link or device has no data, whatever its size field says: what follows its
/// header is the next header (as Go reads it), never a body to skip.
#[test]
fn header_only_types_have_no_data_whatever_their_size_says() {
    let inner = file("smuggled", b"payload");
    let mut d = entry(b"d/", b'5', &inner, b"", 0o755, (0, 0));
    d.truncate(512);
    let mut size = format!("{:011o}\0", inner.len()).into_bytes();
    size.truncate(12);
    patch(&mut d, 124, &size);
    let mut layer = d;
    layer.extend_from_slice(&inner);
    layer.extend_from_slice(&[0; 1024]);
    let got = all(&layer).unwrap();
    let names: Vec<&[u8]> = got.iter().map(|(h, _)| h.path.as_slice()).collect();
    assert_eq!(names, [&b"d/"[..], b"smuggled"]);
    assert_eq!(got[0].0.kind, Kind::Dir);
    assert_eq!(got[1].1, b"payload");
}

/// A meta header larger than 1 MiB is refused from its size field, before it is read: a few
/// bytes of stream cannot make the reader allocate a gibibyte.
#[test]
fn meta_headers_are_capped_at_one_mebibyte() {
    for typ in [b'L', b'K', b'x', b'g'] {
        let mut h = entry(b"././@LongLink", typ, b"", b"", 0o644, (0, 0));
        patch(&mut h, 124, format!("{:011o}\0", 1u64 << 30).as_bytes());
        let e = all(&h).unwrap_err();
        assert!(e.to_string().contains("1048576"), "{}: {e}", typ as char);
    }
    // Exactly 1 MiB is accepted.
    let name = vec![b'n'; 1 << 20];
    let layer = tar(&[
        entry(b"././@LongLink", b'L', &name, b"", 0o644, (0, 0)),
        file("x", b""),
    ]);
    assert_eq!(all(&layer).unwrap()[0].0.path.len(), 1 << 20);
}

#[test]
fn broken_streams_are_errors() {
    let mut bad_sum = file("a", b"x");
    bad_sum[0] = b'b';
    assert!(
        all(&tar(&[bad_sum]))
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
    // One zero block, then an entry: hidden after the end.
    let mut hidden = vec![0u8; 512];
    hidden.extend_from_slice(&file("hidden", b"x"));
    assert!(all(&hidden).is_err());
    // Cut inside a header, inside data, after a meta header.
    let f = file("a", &[1u8; 1000]);
    assert!(all(&f[..100]).is_err());
    assert!(all(&f[..700]).is_err());
    assert!(all(&pax(&[("path", b"p")])).is_err());
    // The stream simply ends where a header would be, or after one zero block: the end.
    assert_eq!(all(&f).unwrap().len(), 1);
    let mut one_zero = f.clone();
    one_zero.extend_from_slice(&[0; 512]);
    assert_eq!(all(&one_zero).unwrap().len(), 1);
    // A negative size, an invalid PAX record.
    let mut neg = file("n", b"");
    patch(&mut neg, 124, &[0xff; 12]);
    assert!(all(&tar(&[neg])).is_err());
    let mut bad_pax = entry(b"p", b'x', b"8 path=a\n", b"", 0o644, (0, 0));
    bad_pax.extend_from_slice(&file("f", b""));
    assert!(all(&tar(&[bad_pax])).is_err());
}

#[test]
fn legacy_directories_and_other_types() {
    let layer = tar(&[
        entry(b"olddir/", 0, b"", b"", 0o755, (0, 0)),
        entry(b"oldfile", 0, b"abc", b"", 0o644, (0, 0)),
        entry(b"contig", b'7', b"def", b"", 0o644, (0, 0)),
        entry(b"dumpdir", b'D', b"listing", b"", 0o755, (0, 0)),
        dir("d"),
    ]);
    let got = all(&layer).unwrap();
    let kinds: Vec<Kind> = got.iter().map(|(h, _)| h.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Dir,
            Kind::File,
            Kind::File,
            Kind::Other(b'D'),
            Kind::Dir
        ]
    );
    assert_eq!(got[2].1, b"def");
}

/// The file GNU tar packs, rebuilt from an entry's map and data.
fn unsparse(h: &Header, data: &[u8]) -> Vec<u8> {
    let s = h.sparse.as_ref().expect("a sparse entry");
    let mut out = vec![0u8; s.real_size as usize];
    let mut at = 0;
    for (off, len) in &s.map {
        let (off, len) = (*off as usize, *len as usize);
        out[off..off + len].copy_from_slice(&data[at..at + len]);
        at += len;
    }
    assert_eq!(at, data.len());
    out
}

/// Sparse files as GNU tar writes them: old GNU (with extension headers beyond 4 segments)
/// and PAX 0.0, 0.1 and 1.0 (whose real names GNU tar hides under `GNUSparseFile.N/`).
#[test]
fn sparse_files_as_gnu_tar_writes_them() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holes");
    let f = std::fs::File::create(&path).unwrap();
    let mut want = vec![0u8; 7 << 20];
    for i in 0..6u64 {
        let off = i * (1 << 20) + 4096 * i;
        let data = vec![b'a' + i as u8; 5000];
        f.write_all_at(&data, off).unwrap();
        want[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    f.set_len(want.len() as u64).unwrap();
    drop(f);
    let cases: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=pax", "--sparse-version=0.0"],
        &["--format=pax", "--sparse-version=0.1"],
        &["--format=pax", "--sparse-version=1.0"],
    ];
    for args in cases {
        let out = std::process::Command::new("tar")
            .args(["-S", "-c", "-f", "-", "-C"])
            .arg(dir.path())
            .args(args)
            .arg("holes")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let got = all(&out.stdout).unwrap();
        assert_eq!(got.len(), 1, "{args:?}");
        let (h, data) = &got[0];
        assert_eq!(h.path, b"holes", "{args:?}");
        assert_eq!(h.kind, Kind::File);
        assert!(data.len() < 100_000, "{args:?}: the data is packed");
        assert!(unsparse(h, data) == want, "{args:?}: the file is rebuilt");
    }
}

#[test]
fn sparse_maps_are_validated() {
    // Overlapping segments, a segment past the real size, a map whose data disagrees.
    for (map, data) in [
        (&b"0,10,5,10"[..], &[1u8; 20][..]),
        (b"0,10,95,10", &[1u8; 20]),
        (b"0,10", &[1u8; 11]),
    ] {
        let layer = tar(&[
            pax(&[
                ("GNU.sparse.major", b"0"),
                ("GNU.sparse.minor", b"1"),
                ("GNU.sparse.size", b"100"),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.map", map),
            ]),
            file("s", data),
        ]);
        let numblocks_ok = map.split(|b| *b == b',').count() == 4;
        let e = all(&layer);
        assert!(e.is_err() || !numblocks_ok, "{map:?}");
    }
    let layer = tar(&[
        pax(&[
            ("GNU.sparse.major", b"0"),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.size", b"100"),
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.map", b"0,10,50,10"),
        ]),
        file("s", &[7u8; 20]),
    ]);
    let got = all(&layer).unwrap();
    let mut want = vec![0u8; 100];
    want[..10].fill(7);
    want[50..60].fill(7);
    assert_eq!(unsparse(&got[0].0, &got[0].1), want);
}
