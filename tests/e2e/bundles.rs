//! Bundles through the real binary: pack → inspect → verify → run round
//! trips, reproducibility, and hostile bundles refused without writing
//! anything outside the store.

use std::io::Write;

use serde_json::Value;

use crate::support::{Cairn, example};

fn pack(cairn: &Cairn, pipeline: &str, out: &std::path::Path) {
    let run = cairn.run(&["bundle", "pack", pipeline, "-o", out.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn pack_inspect_verify_sign_run_round_trip_for_every_example() {
    for name in ["orders", "text", "flaky"] {
        let cairn = Cairn::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.cairn"));
        pack(&cairn, &example(name), &file);
        let file_s = file.to_str().unwrap();
        // The flaky example keeps its attempt counter in a scratch dir next
        // to the bundle (relative grants resolve against the bundle's dir).
        std::fs::create_dir(dir.path().join("state")).unwrap();

        let inspect = cairn.run(&["bundle", "inspect", file_s, "--json"]);
        assert_eq!(inspect.code, 0, "{}", inspect.stderr);
        let info = inspect.json();
        assert_eq!(info["pipeline"], name);
        assert!(
            info["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["path"] == "pipeline.toml")
        );
        assert!(
            info["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["component_hash"].as_str().unwrap().len() == 64)
        );
        if name == "flaky" {
            let unreliable = info["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "unreliable")
                .unwrap();
            assert_eq!(
                unreliable["capabilities"],
                serde_json::json!(["scratch:state"]),
                "inspect shows what a step asks for"
            );
        }

        let verify = cairn.run(&["bundle", "verify", file_s]);
        assert_eq!(verify.code, 0, "{}", verify.stderr);
        assert!(
            verify.stdout.contains(info["id"].as_str().unwrap()),
            "{}",
            verify.stdout
        );

        let key = dir.path().join("author");
        assert_eq!(
            cairn
                .run(&["key", "gen", "--out", key.to_str().unwrap()])
                .code,
            0
        );
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let signed = cairn.run(&[
            "bundle",
            "sign",
            file_s,
            "--key",
            key.with_extension("key").to_str().unwrap(),
        ]);
        assert_eq!(signed.code, 0, "{}", signed.stderr);
        assert!(
            cairn
                .run(&["bundle", "verify", file_s])
                .stdout
                .contains("1 valid signature")
        );

        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            // The flaky example keeps state in a host directory next to
            // the bundle: allowed only under an allow_scratch prefix.
            format!(
                "[default]\nmax_memory = \"1GiB\"\nallow_scratch = [\"{}\"]\nrequire_signed = true\ntrusted_keys = [\"{}\"]\n",
                dir.path().display(),
                public.trim()
            ),
        )
        .unwrap();
        let from_bundle = cairn.run(&[
            "run",
            file_s,
            "--json",
            "--policy",
            policy.to_str().unwrap(),
        ]);
        assert_eq!(from_bundle.code, 0, "{name}: {}", from_bundle.stderr);
        let from_dir = Cairn::new().run(&["run", &example(name), "--json"]);
        assert_eq!(
            from_bundle.json()["output"],
            from_dir.json()["output"],
            "{name}: same output from the bundle"
        );
    }
}

#[test]
fn a_bundle_asking_for_a_read_dir_the_policy_forbids_is_refused() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("private")).unwrap();
    let pipeline = crate::support::Pipeline::new(
        "name = \"nosy\"\n[steps.peek]\ncomponent = \"{wasm:hostile}\"\ninput = { attack = \"list-root\" }\ngrants = { read = [\"private\"] }\n",
    );
    std::fs::create_dir(pipeline.dir.path().join("private")).unwrap();
    let file = dir.path().join("nosy.cairn");
    pack(&cairn, pipeline.path(), &file);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[default]\nallow_read = [\"/srv/data\"]\n").unwrap();
    let run = cairn.run(&[
        "run",
        file.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let expected = format!(
        "step `peek`: read access to {} is not in allow_read",
        dir.path().join("private").display()
    );
    assert!(
        run.stderr.contains(&expected),
        "expected {expected:?} in {}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was run"), "{}", run.stderr);
}

#[test]
fn packing_the_same_sources_twice_gives_the_same_bytes() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.cairn"), dir.path().join("b.cairn"));
    pack(&cairn, &example("orders"), &a);
    pack(&cairn, &example("orders"), &b);
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

/// Write a gzip'd tar with raw member names (as an attacker would).
fn hostile(members: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let gz = zstd::stream::write::Encoder::new(&mut out, 1)
            .unwrap()
            .auto_finish();
        let mut tar = tar::Builder::new(gz);
        for (path, data, kind) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        drop(tar.into_inner().unwrap());
    }
    out
}

fn lock(members: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<Value> = members
        .iter()
        .map(|(p, d)| serde_json::json!({"path": p, "blake3": blake3::hash(d).to_hex().as_str(), "size": d.len()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"format": 1, "members": entries})).unwrap()
}

/// Run `cairn bundle verify` and `cairn run` on `bytes` from an empty working
/// directory; both must fail with `needle`, and nothing may appear on disk.
fn refused(bytes: &[u8], needle: &str) {
    let cairn = Cairn::new();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("evil.cairn");
    std::fs::write(&file, bytes).unwrap();
    for args in [vec!["bundle", "verify"], vec!["run"]] {
        let mut args = args.clone();
        args.push(file.to_str().unwrap());
        let out = cairn
            .command()
            .current_dir(work.path())
            .args(&args)
            .output()
            .unwrap();
        let run = crate::support::Run::from(out);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["evil.cairn"],
        "nothing may be written outside the store"
    );
    assert!(!std::path::Path::new("/tmp/cairn-e2e-escaped").exists());
}

const MANIFEST: &[u8] = b"name = \"evil\"\n[steps.a]\ncomponent = \"c.wasm\"\n";

#[test]
fn a_member_whose_hash_does_not_match_is_refused() {
    let l = lock(&[("pipeline.toml", b"name = \"other\"\n")]);
    refused(
        &hostile(&[
            ("cairn.lock", &l, tar::EntryType::Regular),
            ("pipeline.toml", MANIFEST, tar::EntryType::Regular),
        ]),
        "does not match the lock",
    );
}

#[test]
fn traversal_and_absolute_paths_are_refused() {
    let l = lock(&[("pipeline.toml", MANIFEST)]);
    for path in ["../../tmp/cairn-e2e-escaped", "/tmp/cairn-e2e-escaped"] {
        let bytes = hostile(&[
            ("cairn.lock", &l, tar::EntryType::Regular),
            (path, b"pwned", tar::EntryType::Regular),
            ("pipeline.toml", MANIFEST, tar::EntryType::Regular),
        ]);
        refused(&bytes, "is refused");
    }
}

#[test]
fn symlink_members_are_refused() {
    let l = lock(&[("pipeline.toml", MANIFEST)]);
    let bytes = hostile(&[
        ("cairn.lock", &l, tar::EntryType::Regular),
        ("data", b"", tar::EntryType::Symlink),
        ("pipeline.toml", MANIFEST, tar::EntryType::Regular),
    ]);
    refused(&bytes, "only regular files are allowed");
}

#[test]
fn a_decompression_bomb_is_refused_at_the_cap() {
    // 300 MB of zeros compresses to a few hundred KB.
    let mut out = Vec::new();
    {
        let gz = zstd::stream::write::Encoder::new(&mut out, 1)
            .unwrap()
            .auto_finish();
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        let size = 300u64 << 20;
        header.set_size(size);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_path("zeros").unwrap();
        header.set_cksum();
        tar.append(&header, std::io::repeat(0).take_bytes(size))
            .unwrap();
        drop(tar.into_inner().unwrap());
    }
    assert!(
        out.len() < 2 << 20,
        "the bomb is small on disk: {}",
        out.len()
    );
    refused(&out, "decompression bomb");
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

#[test]
fn a_truncated_bundle_is_refused() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.cairn");
    pack(&cairn, &example("text"), &file);
    let bytes = std::fs::read(&file).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 4] {
        refused(&bytes[..cut], "not a readable archive");
    }
}

#[test]
fn garbage_is_refused() {
    let mut bytes = vec![0x28, 0xb5, 0x2f, 0xfd];
    bytes.write_all(b"not really zstd at all").unwrap();
    refused(&bytes, "not a readable archive");
}
