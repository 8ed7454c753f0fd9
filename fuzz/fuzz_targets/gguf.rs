//! Arbitrary bytes as a GGUF file: `Err`, or a file whose every tensor (of a supported type)
//! dequantizes without panicking to exactly as many values as its shape says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torchless_format::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data) else {
        return;
    };
    for info in file.tensors() {
        if let Ok(values) = file.tensor_f32(info.name()) {
            assert_eq!(values.len() as u64, info.n_elements());
        }
    }
});
