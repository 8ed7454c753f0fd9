//! Finding special-token strings (`<s>`, `[INST]`, ...) in text, for
//! `EncodeOptions::parse_special`: leftmost-longest as Hugging Face does ([`SpecialMatcher`]),
//! or longest token first as llama.cpp does ([`Partition`]).

use std::collections::BTreeMap;

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

    /// Calls `f(length, id)` for every token that starts at `bytes[0]`, shortest first.
    fn each_at(&self, bytes: &[u8], mut f: impl FnMut(usize, u32)) {
        let mut node = 0usize;
        for (len, &byte) in bytes.iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(pos) => node = children[pos].1 as usize,
                Err(_) => break,
            }
            if let Some(id) = self.nodes[node].token {
                f(len + 1, id);
            }
        }
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

/// llama.cpp's special-token partition (`tokenizer_st_partition`): the tokens are taken one at a
/// time, longest text first (equal lengths by id), and each splits every stretch of text not yet
/// claimed at its occurrences, left to right. This differs from leftmost-longest matching only
/// when occurrences overlap (`"ab"` and `"bcd"` in `"abcd"`: llama.cpp takes `bcd`).
///
/// Control and unknown tokens take part only with `parse_special`; user-defined ones always.
#[derive(Debug, Clone, Default)]
pub(crate) struct Partition {
    /// Every token's text, the trie value being its index in `order`.
    trie: SpecialMatcher,
    /// `(id, user_defined)` in llama.cpp's order.
    order: Vec<(u32, bool)>,
}

impl Partition {
    /// `(text, id, user_defined)` of each token taking part.
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32, bool)>) -> Self {
        let mut tokens: Vec<(&str, u32, bool)> = tokens
            .into_iter()
            .filter(|(t, _, _)| !t.is_empty())
            .collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let trie = SpecialMatcher::new(
            tokens
                .iter()
                .enumerate()
                .map(|(index, &(text, _, _))| (text, index as u32)),
        );
        let order = tokens.iter().map(|&(_, id, user)| (id, user)).collect();
        Partition { trie, order }
    }

    /// The tokens found in `text`, in text order.
    pub(crate) fn find_all(&self, text: &str, parse_special: bool) -> Vec<SpecialMatch> {
        if self.trie.is_empty() {
            return Vec::new();
        }
        // Every occurrence of every token, as (index in order, start, length).
        let bytes = text.as_bytes();
        let mut candidates: Vec<(u32, usize, usize)> = Vec::new();
        for pos in 0..bytes.len() {
            if self.trie.is_first_byte[usize::from(bytes[pos])] {
                self.trie.each_at(&bytes[pos..], |len, index| {
                    let (_, user_defined) = self.order[index as usize];
                    if parse_special || user_defined {
                        candidates.push((index, pos, len));
                    }
                });
            }
        }
        candidates.sort_unstable();
        // Claimed stretches, start -> (end, id): a token's occurrence is taken if it overlaps
        // none (earlier tokens, and its own earlier occurrences: `find` moves past a match).
        let mut claimed: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        for (index, start, len) in candidates {
            let end = start + len;
            if let Some((&before, &(before_end, _))) = claimed.range(..end).next_back() {
                if before >= start || before_end > start {
                    continue;
                }
            }
            claimed.insert(start, (end, self.order[index as usize].0));
        }
        claimed
            .into_iter()
            .map(|(start, (end, id))| SpecialMatch { start, end, id })
            .collect()
    }
}
