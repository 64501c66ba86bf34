//! Writes the Maglev tables through a shared memory mapping of their array
//! (created with `BPF_F_MMAPABLE`, Linux 5.5+). A table is M slots (65,537
//! by default); a syscall per slot, or even the kernel's batch update, cost
//! about half a microsecond per slot, while a copy into the mapping costs a
//! fraction of a nanosecond, and the XDP program reads the same memory.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;

/// A shared, writable mapping of an mmap-able array map whose values are
/// `[u16; 4]`, seen as one run of `u16` slots (element `i` holds slots `4i`
/// to `4i + 3`).
pub struct MmapArray {
    /// Kept open for as long as it is mapped.
    _map: MapData,
    base: NonNull<u16>,
    /// Bytes mapped.
    len: usize,
    slots: usize,
}

// SAFETY: the mapping belongs to this value alone (in this process) and is
// only written through `&mut self`; the kernel side synchronises on its own.
unsafe impl Send for MmapArray {}
unsafe impl Sync for MmapArray {}

impl MmapArray {
    /// Maps the first `slots` slots of `map`, which must have been created
    /// with `BPF_F_MMAPABLE`, 8-byte values and at least `slots / 4` entries.
    pub fn new(map: MapData, slots: usize) -> io::Result<Self> {
        let len = slots
            .checked_mul(size_of::<u16>())
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
        let base = NonNull::new(ptr.cast::<u16>())
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
    pub fn write(&mut self, start: u32, values: &[u16]) -> io::Result<()> {
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
        // SAFETY: `start + values.len() <= slots`, all inside the mapping,
        // which nothing else in this process aliases. Slots are aligned
        // u16s, each of which a concurrent reader sees whole, before or
        // after the copy (and the table written is not the live one).
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.base.as_ptr().add(start),
                values.len(),
            )
        };
        fence(Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: exactly the region `new` mapped; nothing refers to it after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
