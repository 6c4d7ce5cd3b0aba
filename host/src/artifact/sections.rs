//! The outer framing of a WebAssembly binary (module or component): an
//! 8-byte header, then sections of `id`, LEB128 `size` and `size` bytes of
//! payload. Signatures are defined over this framing, so it is read here
//! without interpreting any section.

use std::ops::Range;

/// The 8-byte header of a WebAssembly component (layer 1).
pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// The 8-byte header of a core WebAssembly module.
pub const MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Custom sections have id 0.
pub const CUSTOM_SECTION_ID: u8 = 0;

/// One top-level section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section<'a> {
    /// The section id (0 for custom sections).
    pub id: u8,
    /// Where the whole section (id, size and payload) lies in the binary.
    pub range: Range<usize>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Section<'a> {
    /// For a custom section, its name and data.
    pub fn custom(&self) -> Option<(&'a str, &'a [u8])> {
        if self.id != CUSTOM_SECTION_ID {
            return None;
        }
        let mut reader = Reader::new(self.payload);
        let name = reader.bytes()?;
        let name = std::str::from_utf8(name).ok()?;
        Some((name, reader.rest()))
    }
}

/// Splits a binary into its header and top-level sections. Fails (with a
/// reason) on a bad header or a section that runs past the end.
pub fn split(bytes: &[u8]) -> Result<Vec<Section<'_>>, String> {
    if bytes.len() < 8 || (bytes[..8] != COMPONENT_HEADER && bytes[..8] != MODULE_HEADER) {
        return Err("not a WebAssembly binary (bad or truncated header)".into());
    }
    let mut sections = Vec::new();
    let mut reader = Reader::new(&bytes[8..]);
    while !reader.is_empty() {
        let start = 8 + reader.position();
        let id = reader.byte().ok_or("truncated section id")?;
        let payload = reader
            .bytes()
            .ok_or_else(|| format!("section at offset {start} runs past the end of the file"))?;
        sections.push(Section {
            id,
            range: start..8 + reader.position(),
            payload,
        });
    }
    Ok(sections)
}

/// Encodes a custom section named `name` holding `data`.
pub fn encode_custom(name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    write_u32(&mut payload, name.len() as u32);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut section = Vec::with_capacity(payload.len() + 6);
    section.push(CUSTOM_SECTION_ID);
    write_u32(&mut section, payload.len() as u32);
    section.extend_from_slice(&payload);
    section
}

/// Appends `value` as unsigned LEB128.
pub fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-prefixed byte string.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// A cursor over bytes that never panics: every read returns `None` past
/// the end.
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes` from the beginning.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }

    /// One byte.
    pub fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.position)?;
        self.position += 1;
        Some(byte)
    }

    /// An unsigned LEB128 value of at most 32 bits.
    pub fn u32(&mut self) -> Option<u32> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(value).ok();
            }
        }
        None
    }

    /// Exactly `len` bytes.
    pub fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(len)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes.get(self.position..).unwrap_or(&[]);
        self.position = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_round_trips() {
        for value in [0, 1, 127, 128, 300, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, value);
            assert_eq!(Reader::new(&out).u32(), Some(value));
        }
        // Five bytes whose value overflows 32 bits are refused.
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x7f]).u32(), None);
    }

    #[test]
    fn splits_sections_and_reads_custom_names() {
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend(encode_custom("hello", b"world"));
        bytes.extend([1, 2, 0xaa, 0xbb]);
        let sections = split(&bytes).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].custom(), Some(("hello", &b"world"[..])));
        assert_eq!(
            (sections[1].id, sections[1].payload),
            (1, &[0xaa, 0xbb][..])
        );
        assert_eq!(sections[1].range.end, bytes.len());
    }

    #[test]
    fn truncated_sections_are_errors() {
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend([1, 10, 0xaa]);
        assert!(split(&bytes).unwrap_err().contains("past the end"));
        assert!(split(b"\0asm").is_err());
    }
}
