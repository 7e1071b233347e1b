//! Issue 16: checking a request against the block list costs the same with 20,000 active IP
//! blocks or 50,000 account blocks as with none (hash lookups, not a scan), and making a block by
//! rule (the request path) does not write the file; an admin block (on disk before it answers)
//! costs the same with 20,000 blocks in the file as with none (one journal line, not a rewrite).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use cvgate::policy::blocks::{Block, BlockScope, Blocks, Who};
use ipnet::IpNet;
use jiff::Timestamp;

fn block(scope: BlockScope, key: String, now: Timestamp) -> Block {
    Block { scope, key, reason: "bench".into(), source: "rule:bench".into(), created: now, until: None }
}

fn bench(c: &mut Criterion) {
    let now: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    let who = Who { account: Some("employer-1"), org: Some("12345678"), ip, ip_prefix: IpNet::new(ip, 24).unwrap() };
    let mut g = c.benchmark_group("blocks_check");
    for (name, ips, accounts) in [("none", 0u32, 0u32), ("20k_ip", 20_000, 0), ("50k_account", 0, 50_000)] {
        let blocks = Blocks::open(None).unwrap();
        for i in 0..ips {
            let net = format!("10.{}.{}.0/24", i / 256, i % 256);
            blocks.add(block(BlockScope::Ip, net, now)).unwrap();
        }
        for i in 0..accounts {
            blocks.add(block(BlockScope::Account, format!("acct-{i}"), now)).unwrap();
        }
        g.bench_function(name, |b| b.iter(|| black_box(blocks.check(black_box(&who), now))));
    }
    g.finish();

    // The same check while another thread makes blocks as the rules do on the request path
    // (in memory, written by `maintain` later): bounded to 2,000,000 blocks or until stopped.
    let blocks = Blocks::open(None).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let maker = {
        let (blocks, stop) = (blocks.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2_000_000 {
                blocks.add(block(BlockScope::Account, format!("flood-{i}"), now)).unwrap();
                i += 1;
            }
            i
        })
    };
    let mut g = c.benchmark_group("blocks_check_while_blocking");
    g.bench_function("account_blocks_being_made", |b| b.iter(|| black_box(blocks.check(black_box(&who), now))));
    g.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("blocks made meanwhile: {}", maker.join().unwrap());

    // An admin block and unblock, persisted (journal line + fdatasync) before they return, with
    // 0 and 20,000 blocks already in the file. Bounded: criterion's sample count.
    let mut g = c.benchmark_group("admin_block_on_disk");
    g.sample_size(20);
    for existing in [0u32, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let blocks = Blocks::open(None).unwrap();
        for i in 0..existing {
            blocks.add(block(BlockScope::Ip, format!("10.{}.{}.0/24", i / 256, i % 256), now)).unwrap();
        }
        blocks.set_file(Some(dir.path().join("blocks.json"))).unwrap(); // the snapshot: all of them
        g.bench_function(format!("block_and_unblock_with_{existing}"), |b| {
            b.iter(|| {
                blocks.add(block(BlockScope::Account, "admin-target".into(), now)).unwrap();
                blocks.remove(BlockScope::Account, "admin-target").unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
