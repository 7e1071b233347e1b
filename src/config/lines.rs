//! Key path → line number, for config errors.
//!
//! serde tells us *what* is wrong and where it was while deserializing, but validation runs on
//! typed structs that no longer know their position. This walks the YAML event stream once and
//! records the line of every key path (`routes[2].path`, `quota.scopes.account`), so every
//! validation error can still point at a line. A path not found maps to `None`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line (1-based) of each key path in a YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// In a mapping: the path of the mapping, and the key whose value comes next (if any).
    Map { path: String, key: Option<String> },
    /// In a sequence: the path of the sequence and the index of the next item.
    Seq { path: String, next: usize },
}

struct Walker {
    stack: Vec<Frame>,
    index: LineIndex,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// The path of the node about to start, or `None` when the node is a mapping key.
    fn node_path(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                // This node is a key: remember it; its line is the key's line.
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    let p = join(path, &k);
                    self.index.lines.entry(p).or_insert(mark.line());
                    *key = Some(k);
                    None
                }
                // This node is the value of `k`.
                Some(k) => Some(join(path, &k)),
            },
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.index.lines.entry(p.clone()).or_insert(mark.line());
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref v, ..) => {
                // A value scalar consumes its key; a key scalar sets it (inside node_path).
                let _ = self.node_path(mark, Some(v));
            }
            Event::Alias(_) => {
                let _ = self.node_path(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.node_path(mark, None).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(mark, None).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Index `text`. A document the event parser rejects yields an empty index (serde will
    /// report that error with its own line).
    pub fn new(text: &str) -> Self {
        let mut w = Walker { stack: Vec::new(), index: LineIndex::default() };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut w, false).is_err() {
            return LineIndex::default();
        }
        w.index
    }

    /// Line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let y = "listen:\n  tls:\n    addr: x\nroutes:\n  - name: a\n    path: /a\n  - name: b\n    path: /b\n";
        let ix = LineIndex::new(y);
        assert_eq!(ix.line_of("listen.tls.addr"), Some(3));
        assert_eq!(ix.line_of("routes[1].path"), Some(8));
        assert_eq!(ix.line_of("routes[1]"), Some(7));
        // Unknown leaf: falls back to the nearest ancestor.
        assert_eq!(ix.line_of("listen.tls.cert"), Some(2));
        assert_eq!(ix.line_of("nothing"), None);
    }
}
