//! Writes a run of array slots with one `BPF_MAP_UPDATE_BATCH` call (Linux
//! 5.6+), which aya does not wrap. A Maglev table is M slots (65,537 by
//! default): one syscall per slot made a table swap cost tens of
//! milliseconds, most of it syscall entry and exit.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Slots per call: bounds the kernel's temporary copy.
const CHUNK: usize = 16 * 1024;

/// `union bpf_attr`'s `batch` member.
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

/// Sets slots `start..start + values.len()` of the array `map` (4-byte
/// values) to `values`.
pub fn set_u32_slots(map: &MapData, start: u32, values: &[u32]) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd();
    let Ok(fd) = u32::try_from(fd) else {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    };
    for (chunk_index, chunk) in values.chunks(CHUNK).enumerate() {
        let first = (chunk_index * CHUNK) as u64 + u64::from(start);
        let keys: Vec<u32> = (0..chunk.len() as u64)
            .map(|i| u32::try_from(first + i))
            .collect::<Result<_, _>>()
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `keys` and `chunk`, both alive and
        // `count` elements long for the whole call; the kernel only reads them
        // and writes `attr.count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.count as usize != chunk.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the kernel wrote {} of {} slots", attr.count, chunk.len()),
            ));
        }
    }
    Ok(())
}
