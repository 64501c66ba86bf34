#![no_main]
// The checks live in the crate (see porter_controller::fuzzing::probe_reply) so that unit tests replay the seeds.
libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_controller::fuzzing::probe_reply(data));
