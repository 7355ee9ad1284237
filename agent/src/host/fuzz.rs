//! (tests only) The mutation fuzzer of the parsers that take input from outside tern: the
//! config file, spool entries, the broker's replies, netlink messages, metric files. Each
//! target's test gives seeds (valid inputs) and a function that parses one input; the fuzzer
//! mutates seeds (bit flips, boundary bytes, inserted, deleted, repeated and spliced runs,
//! cuts) and calls the function until its time is up: TERN_FUZZ_SECONDS (`cargo xtask fuzz`),
//! else two seconds. A panic fails the test with the input in hex; such an input, once the
//! parser is fixed, goes into `agent/fuzz/TARGET/` as a file, where every run starts from it.

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    time::{Duration, Instant},
};

/// Inputs stay under this: every parser here reads messages or files of a few KiB.
const MAX_INPUT: usize = 64 << 10;
/// A run stops after this many inputs whatever its time.
const MAX_RUNS: u64 = 50_000_000;
const DEFAULT_SECONDS: u64 = 2;
/// Bytes at the edges of signed and unsigned ranges, and of ASCII and UTF-8.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'{', 0xc3];

/// Fuzzes `parse` from `seeds` and the kept regression inputs of `target`; returns how many
/// inputs it tried.
pub fn run(target: &str, seeds: &[Vec<u8>], mut parse: impl FnMut(&[u8])) -> u64 {
    let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
    let kept = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(target);
    if let Ok(entries) = fs::read_dir(&kept) {
        corpus.extend(entries.flatten().filter_map(|e| fs::read(e.path()).ok()));
    }
    assert!(!corpus.is_empty(), "{target}: no seed");
    let seconds = std::env::var("TERN_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut rng = fastrand::Rng::new();
    let mut runs = 0;
    // Every kept input and seed once as it is, then mutations.
    let mut inputs = corpus.clone().into_iter();
    while runs < MAX_RUNS && (runs < corpus.len() as u64 || Instant::now() < until) {
        let input = inputs.next().unwrap_or_else(|| mutate(&mut rng, &corpus));
        if catch_unwind(AssertUnwindSafe(|| parse(&input))).is_err() {
            panic!(
                "{target}: the parser panicked on this input (keep it in agent/fuzz/{target}/ \
                 once fixed): {}",
                hex(&input)
            );
        }
        runs += 1;
    }
    eprintln!("fuzz {target}: {runs} inputs in {seconds} s");
    runs
}

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=8) {
        let len = data.len();
        match rng.u8(..7) {
            0 if len > 0 => data[rng.usize(..len)] ^= 1 << rng.u8(..8),
            1 if len > 0 => data[rng.usize(..len)] = INTERESTING[rng.usize(..INTERESTING.len())],
            2 => {
                let at = rng.usize(..=len);
                let run: Vec<u8> = (0..rng.usize(1..=16)).map(|_| rng.u8(..)).collect();
                data.splice(at..at, run);
            }
            3 if len > 0 => {
                let from = rng.usize(..len);
                let to = rng.usize(from..=len.min(from + 64));
                data.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.usize(..len);
                let to = rng.usize(from..=len.min(from + 64));
                let run = data[from..to].to_vec();
                let at = rng.usize(..=len);
                data.splice(at..at, run);
            }
            5 => {
                let other = &corpus[rng.usize(..corpus.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let to = rng.usize(from..=other.len());
                    let at = rng.usize(..=len);
                    data.splice(at..at, other[from..to].iter().copied());
                }
            }
            6 if len > 0 => data.truncate(rng.usize(..len)),
            _ => {}
        }
    }
    data.truncate(MAX_INPUT);
    data
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_fuzzer_finds_a_planted_panic() {
    let result = catch_unwind(|| {
        run("planted", &[b"ab".to_vec()], |input| {
            assert!(!input.starts_with(b"b"), "planted");
        })
    });
    assert!(
        result.is_err(),
        "a parser that panics on one byte went unnoticed"
    );
}
