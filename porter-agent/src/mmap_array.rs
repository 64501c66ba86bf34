//! Writes the Maglev tables through a shared memory mapping of their array
//! (created with `BPF_F_MMAPABLE`, Linux 5.5+). A table is M slots (65,537
//! by default); a syscall per slot, or even the kernel's batch update, cost
//! about a microsecond per slot, while a store to the mapping costs a
//! nanosecond or so, and the XDP program reads the same memory.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;

/// The kernel lays an array's values out `round_up(value_size, 8)` bytes
/// apart, so a 4-byte slot is followed by 4 bytes of padding.
const STRIDE: usize = 8;
const SLOT_WORDS: usize = STRIDE / size_of::<u32>();

/// A shared, writable mapping of an mmap-able array map of `u32` values.
pub struct MmapArray {
    /// Kept open for as long as it is mapped.
    _map: MapData,
    base: NonNull<u32>,
    /// Bytes mapped.
    len: usize,
    slots: usize,
}

// SAFETY: the mapping belongs to this value alone (in this process) and is
// only written through `&mut self`; the kernel side synchronises on its own.
unsafe impl Send for MmapArray {}
unsafe impl Sync for MmapArray {}

impl MmapArray {
    /// Maps all `slots` slots of `map`, which must have been created with
    /// `BPF_F_MMAPABLE`, 4-byte values and at least `slots` entries.
    pub fn new(map: MapData, slots: usize) -> io::Result<Self> {
        let len = slots
            .checked_mul(STRIDE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::E2BIG))?;
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of a map fd we hold; the kernel
        // checks the length against the map's size and its flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u32>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self {
            _map: map,
            base,
            len,
            slots,
        })
    }

    /// Sets slots `start..start + values.len()` to `values`, and makes the
    /// stores visible before any later map update (the one that publishes
    /// the table to the XDP program).
    pub fn write(&mut self, start: u32, values: &[u32]) -> io::Result<()> {
        let start = start as usize;
        if start.saturating_add(values.len()) > self.slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "slots {start}..{} lie beyond the array's {}",
                    start.saturating_add(values.len()),
                    self.slots
                ),
            ));
        }
        for (index, &value) in values.iter().enumerate() {
            // SAFETY: `start + index < slots`, and the mapping holds `slots`
            // strides. Each slot is a whole aligned u32, which a concurrent
            // reader sees either before or after this store.
            unsafe {
                self.base
                    .as_ptr()
                    .add((start + index) * SLOT_WORDS)
                    .write_volatile(value)
            };
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: exactly the region `map` mapped; nothing refers to it after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
