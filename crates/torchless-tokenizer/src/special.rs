//! Finding special-token strings (`<s>`, `[INST]`, ...) in text, for
//! `EncodeOptions::parse_special`.

/// A byte trie over the special-token strings, matched leftmost-longest (the
/// same rule as Hugging Face's added-token matching).
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialMatcher {
    nodes: Vec<TrieNode>,
    /// Bytes that start at least one special token: a quick reject for the
    /// vast majority of positions.
    is_first_byte: Vec<bool>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// Children sorted by byte.
    children: Vec<(u8, u32)>,
    /// The token ending here, if any.
    token: Option<u32>,
}

/// One special token found in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpecialMatch {
    pub start: usize,
    pub end: usize,
    pub id: u32,
}

impl SpecialMatcher {
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut matcher = SpecialMatcher {
            nodes: vec![TrieNode::default()],
            is_first_byte: vec![false; 256],
        };
        for (text, id) in tokens {
            if text.is_empty() {
                continue;
            }
            let mut node = 0usize;
            for &byte in text.as_bytes() {
                node = match matcher.nodes[node]
                    .children
                    .binary_search_by_key(&byte, |&(b, _)| b)
                {
                    Ok(pos) => matcher.nodes[node].children[pos].1 as usize,
                    Err(pos) => {
                        let child = matcher.nodes.len();
                        matcher.nodes.push(TrieNode::default());
                        matcher.nodes[node]
                            .children
                            .insert(pos, (byte, child as u32));
                        child
                    }
                };
            }
            matcher.nodes[node].token = Some(id);
            matcher.is_first_byte[usize::from(text.as_bytes()[0])] = true;
        }
        matcher
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[0].children.is_empty()
    }

    /// The longest special token that starts at `bytes[0]`, as (length, id).
    fn longest_at(&self, bytes: &[u8]) -> Option<(usize, u32)> {
        let mut node = 0usize;
        let mut best = None;
        for (len, &byte) in bytes.iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(pos) => node = children[pos].1 as usize,
                Err(_) => break,
            }
            if let Some(id) = self.nodes[node].token {
                best = Some((len + 1, id));
            }
        }
        best
    }

    /// All non-overlapping matches, leftmost first, longest at each position.
    pub(crate) fn find_all(&self, text: &str) -> Vec<SpecialMatch> {
        let mut matches = Vec::new();
        if self.is_empty() {
            return matches;
        }
        let bytes = text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            if self.is_first_byte[usize::from(bytes[pos])] {
                if let Some((len, id)) = self.longest_at(&bytes[pos..]) {
                    matches.push(SpecialMatch {
                        start: pos,
                        end: pos + len,
                        id,
                    });
                    pos += len;
                    continue;
                }
            }
            pos += 1;
        }
        matches
    }
}
