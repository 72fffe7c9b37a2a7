//! The `bpf(2)` commands aya 0.14 does not wrap (`sys_bpf` runs any of them), above all many
//! map elements per call (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`). The kernel still updates the elements one by one, but a
//! syscall costs about as much as the update itself: a configuration of 10,000 services has
//! some 330,000 elements, a third of a second of syscalls one at a time.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{Pod, maps::MapData};

use super::DataplaneError;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Elements per call, so one call never holds the CPU in the kernel for long.
const CHUNK: usize = 4096;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
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

impl BatchAttr {
    /// A `BPF_MAP_LOOKUP_BATCH` of up to `count` elements into `keys` and `values`, after the
    /// element `resume` names (`None`: from the first); the kernel writes the next resume
    /// token into `next`.
    fn lookup(
        map: &MapData,
        resume: Option<&mut u64>,
        next: &mut u64,
        keys: *mut u8,
        values: *mut u8,
        count: usize,
    ) -> Self {
        Self {
            in_batch: resume.map_or(0, |token| std::ptr::from_mut(token) as u64),
            out_batch: std::ptr::from_mut(next) as u64,
            keys: keys as u64,
            values: values as u64,
            count: count as u32,
            map_fd: fd(map) as u32,
            elem_flags: 0,
            flags: 0,
        }
    }
}

/// `bpf(command, attr, size_of(attr))`: its result, or the error.
///
/// # Safety
/// `attr` has the layout of the member of the kernel's `union bpf_attr` that `command` reads,
/// and every pointer in it points at a live buffer of the size the command uses.
pub(super) unsafe fn sys_bpf<A>(command: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    // SAFETY: the caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Runs one batch command. The kernel writes `attr.count` back (the elements done) and, for
/// lookups, the resume token behind `attr.out_batch`.
fn run(command: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: the callers point `keys`, `values` and the tokens at live buffers of `count`
    // elements of the map's key and value sizes (or 0), in the layout of the kernel's
    // bpf_attr for batch commands.
    unsafe { sys_bpf(command, attr) }.map(drop)
}

/// Runs one update or delete batch over `count` elements; `Err` with the elements done before
/// the one that failed, and the error.
fn call(
    command: libc::c_long,
    map_fd: u32,
    keys: u64,
    values: u64,
    count: usize,
) -> Result<(), (usize, std::io::Error)> {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys,
        values,
        count: count as u32,
        map_fd,
        elem_flags: 0,
        flags: 0,
    };
    run(command, &mut attr).map_err(|error| (attr.count as usize, error))
}

/// The map's descriptor as the kernel's attributes take it.
fn fd(map: &MapData) -> i32 {
    map.fd().as_fd().as_raw_fd()
}

/// Writes `values[i]` under `keys[i]` (insert or replace).
pub fn update<K: Pod, V: Pod>(
    map: &MapData,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<(), DataplaneError> {
    update_fd(fd(map), name, keys, values)
}

/// `update` by descriptor: for a map of maps, written from many threads, whose values are the
/// descriptors of the inner maps.
pub fn update_fd<K: Pod, V: Pod>(
    map_fd: i32,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<(), DataplaneError> {
    assert_eq!(keys.len(), values.len(), "a value for every key");
    update_chunks(map_fd, name, keys, "writing", |first| {
        values[first..].as_ptr() as u64
    })
}

/// Sets every byte of every element of the array map `map` (of any value size) to `byte`.
pub fn fill_array(map: &MapData, name: &'static str, byte: u8) -> Result<(), DataplaneError> {
    let info = map
        .info()
        .map_err(|error| DataplaneError::Map { name, error })?;
    let keys: Vec<u32> = (0..info.max_entries()).collect();
    let values = vec![byte; CHUNK * info.value_size() as usize];
    update_chunks(fd(map), name, &keys, "filling", |_| values.as_ptr() as u64)
}

/// Sets every CPU's value of `ids` in a per-CPU array to `V::default()` (`cpus`: the kernel's
/// possible CPUs; the kernel lays each key's values 8 bytes apart, `V` a multiple of that).
pub fn zero_percpu<V: Pod + Default>(
    map: &MapData,
    name: &'static str,
    ids: &[u32],
    cpus: usize,
) -> Result<(), DataplaneError> {
    debug_assert!(std::mem::size_of::<V>().is_multiple_of(8));
    let zeros: Vec<V> = std::iter::repeat_with(V::default)
        .take(ids.len().min(CHUNK) * cpus)
        .collect();
    update_chunks(fd(map), name, ids, "zeroing", |_| zeros.as_ptr() as u64)
}

/// One `BPF_MAP_UPDATE_BATCH` per `CHUNK` of `keys`, the values of the chunk that starts at
/// key `first` at `values(first)`, laid out as the kernel reads them; `what` the write, for
/// errors.
fn update_chunks<K: Pod>(
    map_fd: i32,
    name: &'static str,
    keys: &[K],
    what: &str,
    values: impl Fn(usize) -> u64,
) -> Result<(), DataplaneError> {
    for (i, chunk) in keys.chunks(CHUNK).enumerate() {
        call(
            BPF_MAP_UPDATE_BATCH,
            map_fd as u32,
            chunk.as_ptr() as u64,
            values(i * CHUNK),
            chunk.len(),
        )
        .map_err(|(done, error)| {
            // E2BIG from an update is a full map, whatever strerror says.
            let why = if error.raw_os_error() == Some(libc::E2BIG) {
                "the map is full".to_owned()
            } else {
                error.to_string()
            };
            DataplaneError::MapValue {
                name,
                message: format!(
                    "{what} {} entries (the kernel took {done}): {why}",
                    chunk.len()
                ),
            }
        })?;
    }
    Ok(())
}

/// Removes `keys`. A key that is not there counts as removed: what must not be there is not.
pub fn delete<K: Pod>(map: &MapData, name: &'static str, keys: &[K]) -> Result<(), DataplaneError> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        match call(
            BPF_MAP_DELETE_BATCH,
            fd(map) as u32,
            chunk.as_ptr() as u64,
            0,
            chunk.len(),
        ) {
            Ok(()) => rest = &rest[chunk.len()..],
            // The kernel stops at the first missing key: skip it and go on after it.
            Err((done, error)) if error.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(done + 1).min(rest.len())..];
            }
            Err((done, error)) => {
                return Err(DataplaneError::MapValue {
                    name,
                    message: format!(
                        "removing {} entries (the kernel took {done}): {error}",
                        chunk.len()
                    ),
                });
            }
        }
    }
    Ok(())
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The `BPF_MAP_*_ELEM` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The id of the map at `index` of the array of maps `outer` (`None`: none there). aya 0.14
/// opens the inner map when it reads one; its id is all a caller that maps it needs.
pub fn inner_map_id(outer: i32, index: u32) -> std::io::Result<Option<u32>> {
    let mut id = 0u32;
    let mut attr = ElemAttr {
        map_fd: outer as u32,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: std::ptr::from_mut(&mut id) as u64,
        flags: 0,
    };
    // SAFETY: `key` and `value` point at live 4-byte buffers, the key and value sizes of an
    // array of maps read from userspace; the attribute is the kernel's layout.
    match unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(id)),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Hands `each` every entry of the (not per-CPU) map `name`, hash or array (an array's empty
/// slots of a map of maps are skipped by the kernel), read `CHUNK` at a time with
/// `BPF_MAP_LOOKUP_BATCH` (a syscall per key costs about three times as much); answers how
/// many. Entries inserted or removed meanwhile may be seen or not; an entry present
/// throughout is seen (the walk goes bucket by bucket, and an entry stays in its bucket).
pub fn each_entry<K: Pod, V: Pod>(
    map: &MapData,
    name: &'static str,
    mut each: impl FnMut(K, V),
) -> Result<u64, DataplaneError> {
    let (key_size, value_size) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    each_entry_bytes(map, key_size, value_size, |key, value| {
        // SAFETY: the kernel wrote a whole key and value of the map's sizes, which are these
        // plain-old-data types' (the map was checked against them when it was opened typed).
        let (key, value) = unsafe {
            (
                key.as_ptr().cast::<K>().read_unaligned(),
                value.as_ptr().cast::<V>().read_unaligned(),
            )
        };
        each(key, value);
    })
    .map_err(|e| DataplaneError::MapValue {
        name,
        message: format!("walking its entries: {e}"),
    })
}

fn each_entry_bytes(
    map: &MapData,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> std::io::Result<u64> {
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    // The kernel's resume token (a bucket index for hash maps); 8 bytes is room enough.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut total = 0u64;
    let mut chunk = CHUNK;
    loop {
        let mut attr = BatchAttr::lookup(
            map,
            (!first).then_some(&mut token_in),
            &mut token_out,
            keys.as_mut_ptr(),
            values.as_mut_ptr(),
            chunk,
        );
        let result = run(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let end = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENOENT));
        if result.is_ok() || end {
            // The end of the map comes with its last entries.
            let read = (attr.count as usize).min(chunk);
            for i in 0..read {
                each(
                    &keys[i * key_size..(i + 1) * key_size],
                    &values[i * value_size..(i + 1) * value_size],
                );
            }
            total += read as u64;
        }
        match result {
            Ok(()) => {}
            Err(_) if end => return Ok(total),
            // A bucket holds more than `chunk` entries (none were read): ask for more at once.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < CHUNK * 64 => {
                chunk *= 2;
                keys.resize(chunk * key_size, 0);
                values.resize(chunk * value_size, 0);
                continue;
            }
            Err(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
}

/// Hands `each` the values of keys `0..count` of a per-CPU array, key by key in order, `cpus`
/// values a key (the kernel's possible CPUs). Read `CHUNK` keys a call with
/// `BPF_MAP_LOOKUP_BATCH` into one buffer reused for every chunk: a syscall per key made a
/// sample of a node's 160,000 backends' counters 160,000 syscalls, and a buffer for all keys
/// at once would grow with the possible CPUs (hundreds of MB on a large machine).
pub fn each_percpu_value<V: Pod + Default>(
    map: &MapData,
    count: u32,
    cpus: usize,
    mut each: impl FnMut(u32, &[V]),
) -> std::io::Result<()> {
    // The kernel lays per-CPU values out 8 bytes apart, and writes value_size of them.
    let info = map.info().map_err(std::io::Error::other)?;
    if info.key_size() != 4
        || info.value_size() as usize != std::mem::size_of::<V>()
        || !std::mem::size_of::<V>().is_multiple_of(8)
    {
        return Err(std::io::Error::other(format!(
            "keys of {} bytes and values of {}, not 4 and {}: lb-ebpf and lb-userspace are out of step",
            info.key_size(),
            info.value_size(),
            std::mem::size_of::<V>()
        )));
    }
    let count = count as usize;
    let mut values: Vec<V> = std::iter::repeat_with(V::default)
        .take(CHUNK * cpus)
        .collect();
    let mut keys = vec![0u32; CHUNK];
    // An array's resume token is a key: the kernel writes and reads its first 4 bytes.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut done = 0;
    while done < count {
        let want = (count - done).min(CHUNK);
        let mut attr = BatchAttr::lookup(
            map,
            (done > 0).then_some(&mut token_in),
            &mut token_out,
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            want,
        );
        let result = run(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(want);
        for (i, key) in keys[..got].iter().enumerate() {
            if *key as usize != done + i {
                return Err(std::io::Error::other("keys out of order: not an array"));
            }
            each(*key, &values[i * cpus..(i + 1) * cpus]);
        }
        done += got;
        match result {
            Ok(()) if got > 0 => token_in = token_out,
            // The end of the array.
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    if done < count {
        return Err(std::io::Error::other(format!(
            "the array has {done} keys, not {count}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aya::maps::{IterableMap as _, PerCpuArray, PerCpuValues};
    use lb_common::maps::TrafficCounters;
    use lb_testkit::e2e_enabled;

    use super::*;

    #[test]
    fn a_per_cpu_array_reads_in_batches_key_by_key_across_chunks() {
        // Creating a map takes root, as the kernel tests do.
        if !e2e_enabled() {
            return;
        }
        let keys = 2 * CHUNK as u32 + 7;
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let value = |key: u32, cpu: usize| TrafficCounters {
            packets: u64::from(key),
            bytes: cpu as u64,
            new_flows: u64::from(key) * 1000 + cpu as u64,
        };
        let mut map: PerCpuArray<MapData, TrafficCounters> =
            PerCpuArray::create(keys + 100, 0).expect("a per-CPU array");
        for key in 0..keys {
            let values = (0..cpus).map(|cpu| value(key, cpu)).collect::<Vec<_>>();
            map.set(
                key,
                PerCpuValues::try_from(values).expect("a value per CPU"),
                0,
            )
            .expect("written");
        }
        let read_keys = |count: u32| {
            let mut read = Vec::new();
            each_percpu_value(map.map(), count, cpus, |key, values: &[TrafficCounters]| {
                read.push((key, values.to_vec()));
            })
            .map(|()| read)
        };
        let read = read_keys(keys).expect("read in batches");
        assert_eq!(read.len(), keys as usize);
        for (i, (key, values)) in read.iter().enumerate() {
            assert_eq!(*key, i as u32, "keys in order");
            let want: Vec<TrafficCounters> = (0..cpus).map(|cpu| value(*key, cpu)).collect();
            assert_eq!(*values, want, "key {key}");
        }
        // Fewer keys than a chunk, and none.
        assert_eq!(read_keys(3).expect("read"), read[..3]);
        assert!(read_keys(0).expect("read").is_empty());
        // More keys than the array has: an error that says so.
        let error = read_keys(keys + 101).expect_err("past the end");
        assert!(error.to_string().contains("not"), "{error}");
        // Values of another size: refused, not written past the buffer.
        let error = each_percpu_value(map.map(), 1, cpus, |_, _: &[[u64; 4]]| {})
            .expect_err("another value size");
        assert!(error.to_string().contains("out of step"), "{error}");
    }
}
