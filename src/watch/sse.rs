//! A server-sent-events reader: bytes in, messages out (the parts of the format `/events`
//! uses: `id`, `event`, `data`, comments; lines end in LF, CRLF or CR).

/// One dispatched message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub id: Option<String>,
    /// `message` when the server named none.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    /// A line not yet ended.
    partial: Vec<u8>,
    /// A CR ended the last chunk: an LF starting the next one belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// The messages completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        for &b in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.partial);
                    if let Some(m) = self.line(&String::from_utf8_lossy(&line)) {
                        out.push(m);
                    }
                }
                _ => self.partial.push(b),
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<Message> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            return data.map(|data| Message {
                id,
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_across_chunks_with_comments_and_line_ends() {
        let mut p = Parser::default();
        let mut got = p.feed(b": keep-alive\n\nid: r-0001\nevent: started\nda");
        assert!(got.is_empty());
        got.extend(p.feed(b"ta: {\"a\":1}\r"));
        got.extend(p.feed(b"\n\r\nevent: end\ndata:{}\ndata: x\n\n"));
        assert_eq!(
            got,
            [
                Message {
                    id: Some("r-0001".into()),
                    event: "started".into(),
                    data: "{\"a\":1}".into()
                },
                Message {
                    id: None,
                    event: "end".into(),
                    data: "{}\nx".into()
                },
            ]
        );
        // A blank line with nothing before it dispatches nothing.
        assert!(p.feed(b"\n\nid: x\n\n").is_empty());
    }
}
