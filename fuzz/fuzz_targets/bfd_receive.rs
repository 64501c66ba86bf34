#![no_main]
// The checks live in the crate (see porter_bfd::fuzzing::receive) so that unit tests replay the seeds.
libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_bfd::fuzzing::receive(data));
