//! Reads a whole hash map, and deletes many of its keys, in a few bpf() calls
//! (BPF_MAP_LOOKUP_BATCH and BPF_MAP_DELETE_BATCH, Linux 5.6) rather than one or two per
//! entry, which at thousands of sockets was most of a report's cost. aya has no batch API, so
//! this calls bpf() on the map's fd; a kernel or map type without batch operations is read and
//! deleted from entry by entry, as before.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData, MapError},
};
use log::info;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's own "not supported" (no batch operation for this map type), which libc does
/// not name.
const ENOTSUPP: i32 = 524;
/// Entries asked for per call: a few hundred KiB of buffer at most.
const CHUNK: usize = 4096;

/// The batch part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, in the kernel's order.
pub fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>, MapError> {
    match batched(map, CHUNK) {
        Ok(entries) => Ok(entries),
        Err(err) if unsupported(&err) => {
            static TOLD: AtomicBool = AtomicBool::new(false);
            if !TOLD.swap(true, Ordering::Relaxed) {
                info!("this kernel reads some maps without batch lookups ({err}): entry by entry");
            }
            map.iter().collect()
        }
        Err(io_error) => Err(MapError::SyscallError(aya::sys::SyscallError {
            call: "BPF_MAP_LOOKUP_BATCH",
            io_error,
        })),
    }
}

/// Deletes `keys` from `map`; a key already gone is skipped.
pub fn delete<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, keys: &[K]) {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `count` keys lie at `keys`; attr lives through the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        if rc == 0 {
            return;
        }
        let err = io::Error::last_os_error();
        if unsupported(&err) {
            for key in rest {
                let _ = map.remove(key);
            }
            return;
        }
        // The kernel stopped at key `count`: gone already (or failing alone); past it.
        rest = rest.get(attr.count as usize + 1..).unwrap_or_default();
    }
}

/// Whether the kernel has no batch operation for this map (an old kernel answers EINVAL to a
/// command it does not know).
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn batched<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, chunk: usize) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(chunk);
    let mut values: Vec<V> = Vec::with_capacity(chunk);
    let mut entries = Vec::new();
    // The position to go on from: a bucket number for hash maps, a key for the generic
    // implementation, so as large as either.
    let token_words = size_of::<K>().max(size_of::<u32>()).div_ceil(8);
    let (mut from, mut to) = (vec![0u64; token_words], vec![0u64; token_words]);
    let mut first = true;
    let mut ask = chunk.max(1);
    loop {
        keys.clear();
        values.clear();
        keys.reserve(ask);
        values.reserve(ask);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { from.as_ptr() as u64 },
            out_batch: to.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: ask as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `ask` keys and values and a position token as large as
        // the kernel writes; attr lives through the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match err.as_ref().and_then(io::Error::raw_os_error) {
            None => false,
            // The end of the map; the last entries come with it.
            Some(libc::ENOENT) => true,
            // One bucket holds more entries than were asked for: ask for more.
            Some(libc::ENOSPC) if (attr.count as usize) == 0 && ask < u32::MAX as usize / 2 => {
                ask *= 2;
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        };
        let got = (attr.count as usize).min(ask);
        // SAFETY: the kernel wrote `got` keys and values; both are plain data.
        unsafe {
            keys.set_len(got);
            values.set_len(got);
        }
        entries.extend(keys.iter().copied().zip(values.iter().copied()));
        if done {
            return Ok(entries);
        }
        std::mem::swap(&mut from, &mut to);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        os::fd::{FromRawFd, OwnedFd},
    };

    use aya::maps::Map;

    use super::*;

    /// A map the kernel makes: BPF_MAP_CREATE of `kind`.
    fn create<K: Pod, V: Pod>(kind: u32, max_entries: u32) -> HashMap<MapData, K, V> {
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let attr = CreateAttr {
            map_type: kind,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
        };
        // SAFETY: a valid attr for BPF_MAP_CREATE (0); the fd returned is ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0,
                &attr as *const CreateAttr,
                size_of::<CreateAttr>(),
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Any map with get_next_key and lookup reads as a hash map.
        HashMap::try_from(Map::HashMap(MapData::from_fd(fd).unwrap())).unwrap()
    }

    const HASH: u32 = 1;
    const DEVMAP_HASH: u32 = 25;

    fn fill(map: &mut HashMap<MapData, [u8; 8], u64>, n: u64, key: impl Fn(u64) -> [u8; 8]) {
        for i in 0..n {
            map.insert(key(i), i * 3, 0).unwrap();
        }
    }

    fn sorted(entries: Vec<([u8; 8], u64)>) -> BTreeMap<[u8; 8], u64> {
        let n = entries.len();
        let sorted: BTreeMap<_, _> = entries.into_iter().collect();
        assert_eq!(sorted.len(), n, "an entry came twice");
        sorted
    }

    fn sorted_keys(entries: Vec<(u32, u32)>) -> Vec<u32> {
        let mut keys: Vec<u32> = entries.into_iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn batches_read_every_entry_once_at_chunk_boundaries() {
        let chunk = 16;
        for n in [0, 1, chunk - 1, chunk, chunk + 1, 5000] {
            let mut map = create(HASH, 8192);
            fill(&mut map, n as u64, u64::to_ne_bytes);
            let expected = sorted(map.iter().collect::<Result<_, _>>().unwrap());
            assert_eq!(expected.len(), n);
            let read = batched(&map, chunk).unwrap();
            assert_eq!(sorted(read), expected, "{n} entries in chunks of {chunk}");
            assert_eq!(sorted(entries(&map).unwrap()), expected, "{n} entries");
        }
    }

    #[test]
    fn a_chunk_smaller_than_a_bucket_grows() {
        let mut map = create(HASH, 4096);
        fill(&mut map, 3000, u64::to_ne_bytes);
        let read = sorted(batched(&map, 1).unwrap());
        assert_eq!(read.len(), 3000);
        assert!(read.iter().all(|(k, v)| u64::from_ne_bytes(*k) * 3 == *v));
    }

    #[test]
    fn batch_deletion_deletes_the_keys_given_and_skips_those_gone() {
        let mut map = create(HASH, 8192);
        fill(&mut map, 5000, u64::to_ne_bytes);
        // Every other key, and some the map never held, first and in the middle.
        let mut gone: Vec<[u8; 8]> = (0..5000).step_by(2).map(u64::to_ne_bytes).collect();
        gone.insert(0, 9_000_000u64.to_ne_bytes());
        gone.insert(700, 9_000_001u64.to_ne_bytes());
        gone.push(9_000_002u64.to_ne_bytes());
        delete(&mut map, &gone);
        delete(&mut map, &[]);
        let left = sorted(entries(&map).unwrap());
        assert_eq!(
            left,
            (1..5000)
                .step_by(2)
                .map(|i: u64| (i.to_ne_bytes(), i * 3))
                .collect()
        );
    }

    #[test]
    fn a_map_without_batch_lookups_is_read_entry_by_entry() {
        // A device hash map has no batch operations; its values are interface indexes, and
        // loopback's is 1 in every namespace.
        let mut map = create::<u32, u32>(DEVMAP_HASH, 64);
        for key in 0..10 {
            map.insert(key, 1, 0).unwrap();
        }
        let err = batched(&map, CHUNK).unwrap_err();
        assert!(unsupported(&err), "{err}");
        let read: BTreeMap<u32, u32> = entries(&map).unwrap().into_iter().collect();
        assert_eq!(read, (0..10).map(|key| (key, 1)).collect());
        delete(&mut map, &[0, 3, 42, 9]);
        let left: Vec<u32> = sorted_keys(entries(&map).unwrap());
        assert_eq!(left, [1, 2, 4, 5, 6, 7, 8]);
    }
}
