//! A minimal protocol-buffers writer: just the wire types `profile.proto`
//! uses (varints, length-delimited bytes and packed varints).

/// Wire type of varint fields.
const VARINT: u64 = 0;
/// Wire type of strings, bytes, sub-messages and packed fields.
const LEN: u64 = 2;

/// A message being encoded. Fields are appended in call order; proto3
/// defaults (zero, empty) are skipped, as protobuf encoders do.
#[derive(Default)]
pub struct Message {
    buf: Vec<u8>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    fn key(&mut self, field: u32, wire: u64) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | wire);
    }

    /// A `uint64` field.
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        if v != 0 {
            self.key(field, VARINT);
            put_varint(&mut self.buf, v);
        }
        self
    }

    /// An `int64` field (two's complement, as protobuf encodes negatives).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.uint(field, v as u64)
    }

    /// A `bool` field.
    pub fn boolean(&mut self, field: u32, v: bool) -> &mut Self {
        self.uint(field, u64::from(v))
    }

    /// A `bytes`/`string` field or an encoded sub-message. Sub-messages are
    /// written even when empty (a repeated element must not vanish).
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, LEN);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A sub-message.
    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.buf)
    }

    /// A packed `repeated int64`/`uint64` field.
    pub fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) -> &mut Self {
        let mut body = Vec::new();
        for v in values {
            put_varint(&mut body, v);
        }
        if !body.is_empty() {
            self.bytes(field, &body);
        }
        self
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_protoc() {
        // Values checked against the protobuf encoding guide's examples.
        let mut m = Message::new();
        m.uint(1, 150);
        assert_eq!(m.buf, [0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.bytes(2, b"testing");
        assert_eq!(
            m.buf,
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        let mut m = Message::new();
        m.packed(4, [3, 270, 86942]);
        assert_eq!(m.buf, [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
        let mut m = Message::new();
        m.int(1, -2).uint(2, 0).boolean(3, false);
        assert_eq!(
            m.buf.len(),
            11,
            "negative int64 is ten bytes, zeros skipped"
        );
    }
}
