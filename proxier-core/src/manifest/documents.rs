//! Splitting a YAML stream into documents that are parsed on their own,
//! and recovering an object's identity from a document that does not
//! parse.
//!
//! A YAML parser cannot resynchronise after a syntax error, so one broken
//! document would take every later document of its file with it. The
//! stream is split at the document markers instead (a line that is `---`,
//! or starts with `--- `, or is `...`, at column 0; YAML ends every block
//! at such a line, so none can sit inside a scalar), and each document is
//! parsed alone.

/// One document of a file: its 0-based index, the 1-based line of the
/// file its text begins on, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    pub index: usize,
    pub first_line: usize,
    pub text: &'a str,
}

/// The length of the marker at the start of `line` (`---` opens a
/// document whose first line may follow on the same line, `...` ends one),
/// or `None` if the line is not a marker.
fn marker_len(line: &str) -> Option<usize> {
    let bare = line.trim_end_matches(['\r', '\n']);
    for m in ["---", "..."] {
        if bare == m {
            return Some(line.len());
        }
        if let Some(rest) = bare.strip_prefix(m)
            && rest.starts_with([' ', '\t'])
        {
            return Some(if m == "---" { 3 } else { line.len() });
        }
    }
    None
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// The documents of `text`, in order: the text between markers. An empty
/// text before the first marker or after the last is not a document;
/// empty documents between markers are kept, so indices count what a
/// reader counts.
pub(crate) fn split(text: &str) -> Vec<Document<'_>> {
    let mut segments = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if let Some(len) = marker_len(line) {
            segments.push((start_line, &text[start..offset]));
            start = offset + len;
            // 1-based line where the next document's text begins.
            start_line = if len == line.len() { n + 2 } else { n + 1 };
        }
        offset += line.len();
    }
    segments.push((start_line, &text[start..]));
    let last = segments.len() - 1;
    segments
        .into_iter()
        .enumerate()
        .filter(|(i, (_, t))| has_content(t) || (*i != 0 && *i != last))
        .enumerate()
        .map(|(index, (_, (first_line, text)))| Document {
            index,
            first_line,
            text,
        })
        .collect()
}

/// `kind`, `namespace` and `name` read from a document's text without a
/// YAML parser, for a document that did not parse: the top-level `kind:`
/// line, and `name:` / `namespace:` inside `metadata` (block or flow
/// style). Any of them may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn scalar(v: &str) -> Option<String> {
    let v = v.trim();
    let end = v.find([',', '}', '#', '\n']).unwrap_or(v.len());
    let v = v[..end].trim().trim_matches(['"', '\'']);
    (!v.is_empty()).then(|| v.to_string())
}

/// The value of `key:` in `text` where the key starts a word.
fn field(text: &str, key: &str) -> Option<String> {
    let pat = format!("{key}:");
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let at = from + i;
        let before = text[..at].chars().next_back();
        if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',') {
            return scalar(&text[at + pat.len()..]);
        }
        from = at + pat.len();
    }
    None
}

impl Identity {
    /// What can be read from `text`.
    pub(crate) fn recover(text: &str) -> Identity {
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix("kind:"))
            .and_then(scalar);
        // `metadata` runs to the next line that starts at column 0.
        let metadata = text.find("metadata:").map(|i| {
            let rest = &text[i + "metadata:".len()..];
            let mut end = rest.len();
            let mut offset = 0;
            for (n, line) in rest.split_inclusive('\n').enumerate() {
                if n > 0 && line.starts_with(|c: char| !c.is_whitespace() && c != '}') {
                    end = offset;
                    break;
                }
                offset += line.len();
            }
            &rest[..end]
        });
        Identity {
            kind,
            namespace: metadata.and_then(|m| field(m, "namespace")),
            name: metadata.and_then(|m| field(m, "name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_markers_only() {
        let text =
            "---\na: 1\n---\nb: |\n  ---x\n  y\n--- {c: 3}\n...\n# only a comment\n---\nd: 4\n";
        let docs = split(text);
        let texts: Vec<&str> = docs.iter().map(|d| d.text.trim()).collect();
        assert_eq!(
            texts,
            vec![
                "a: 1",
                "b: |\n  ---x\n  y",
                "{c: 3}",
                "# only a comment",
                "d: 4"
            ]
        );
        assert_eq!(docs[1].first_line, 4);
        assert_eq!(docs[2].first_line, 7);
        assert_eq!(docs[4].index, 4);
        assert_eq!(split("a: 1\n").len(), 1);
        assert_eq!(split("").len(), 0);
    }

    #[test]
    fn recovers_identity_from_broken_documents() {
        let flow =
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc-b, namespace: md\nspec: [\n";
        assert_eq!(
            Identity::recover(flow),
            Identity {
                kind: Some("Service".into()),
                namespace: Some("md".into()),
                name: Some("svc-b".into())
            }
        );
        let block = "kind: EndpointSlice\nmetadata:\n  generateName: x-\n  name: \"web-1\"\n  namespace: demo\nendpoints: [\n";
        let id = Identity::recover(block);
        assert_eq!(id.name.as_deref(), Some("web-1"));
        assert_eq!(id.namespace.as_deref(), Some("demo"));
        // A `name:` outside metadata is not the object's.
        let outside = "kind: Service\nmetadata:\n  namespace: a\nspec:\n  ports: [{name: http\n";
        assert_eq!(Identity::recover(outside).name, None);
        assert_eq!(Identity::recover(": : :"), Identity::default());
    }
}
