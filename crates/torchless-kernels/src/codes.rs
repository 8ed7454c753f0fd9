//! Aligned storage for quantized activations.

/// Activation codes starting on a cache line, so that the kernels' vector loads of a block's
/// codes do not split across two lines (split 64-byte loads cost the Q4_K decode kernel ~10%). Safe
/// code: a buffer 63 bytes longer than the codes, viewed from its first 64-byte boundary.
#[derive(Clone, Debug, Default)]
pub(crate) struct Codes {
    buf: Vec<i8>,
    at: usize,
    len: usize,
}

impl Codes {
    /// `len` zero codes.
    pub(crate) fn zeroed(len: usize) -> Self {
        let buf = vec![0; len + 63];
        // A clone may lose the alignment (never the contents): `at` stays within the slack.
        let at = buf.as_ptr().align_offset(64).min(63);
        Self { buf, at, len }
    }
}

impl std::ops::Deref for Codes {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for Codes {
    fn deref_mut(&mut self) -> &mut [i8] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::Codes;

    #[test]
    fn codes_start_on_a_cache_line_and_keep_their_contents_when_cloned() {
        for len in [0, 1, 63, 64, 4096 + 5] {
            let mut c = Codes::zeroed(len);
            assert_eq!(c.len(), len);
            assert_eq!(c.as_ptr() as usize % 64, 0, "len {len}");
            for (i, v) in c.iter_mut().enumerate() {
                *v = (i % 127) as i8;
            }
            let copy = c.clone();
            assert!(copy.iter().enumerate().all(|(i, &v)| v == (i % 127) as i8));
        }
    }
}
