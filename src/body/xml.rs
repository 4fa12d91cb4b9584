//! The one strict XML reader, part of the body step, for WeChat Pay v2
//! bodies (and the decrypted refund `req_info`) and JD Pay envelopes (and
//! their decrypted payloads). A pure function of `&[u8]` that never panics.
//!
//! [`read`] gives one root [`Element`]; how deep elements may nest and
//! which siblings may repeat is the caller's [`Shape`]. Refused, always
//! (a refused body is malformed, never forwarded):
//! * a DOCTYPE, and so any entity declaration: the XXE class of attacks
//!   has nothing to work with; an entity other than the five predefined
//!   ones; a character reference to NUL;
//! * comments, processing instructions, attributes, a declaration anywhere
//!   but at the start, a declared encoding other than UTF-8, a name or
//!   text that is not UTF-8;
//! * a character XML 1.0 does not allow (a C0 control other than tab, LF
//!   and CR, U+FFFE, U+FFFF), written as itself, in CDATA or as a
//!   character reference: the SDKs' parsers (Java's DOM, PHP's libxml2)
//!   refuse such a document, and the Java signers trim C0 controls off
//!   values, so a control appended to a captured notification's value
//!   would otherwise still verify;
//! * an element with both text and child elements, text or content outside
//!   the root, a second root, elements deeper than the shape allows, a
//!   repeated sibling the shape does not allow, more than [`MAX_ELEMENTS`]
//!   elements, and anything that is not well-formed.
//!
//! Text is what an XML parser reports and the official SDKs' DOM parsers
//! hand to their signers: character data and CDATA, references resolved,
//! line ends normalised (CR LF and a lone CR become LF). Whitespace between
//! elements is XML's (space, tab, CR, LF).
//!
//! Two views sit on the reader: [`XmlMap`], the flat map of the root's
//! children that a WeChat notification is, and [`Envelope`], JD Pay's
//! outer `<jdpay>` document.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use super::{ParseError, shown};

/// Most elements one document may hold.
pub const MAX_ELEMENTS: usize = 1024;

/// Why XML was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("DOCTYPE or entity declarations are not accepted")]
    Doctype,
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error("declared encoding `{0}`; only UTF-8")]
    Encoding(String),
    #[error("{0} is not UTF-8")]
    Utf8(String),
    #[error("{0} holds a character XML does not allow")]
    Character(String),
    #[error("element `{0}` has attributes")]
    Attributes(String),
    #[error("{0}")]
    Reference(String),
    #[error("element `{0}` holds another element, or text beside its elements")]
    Nesting(String),
    #[error("element `{0}` appears more than once")]
    Repeated(String),
    #[error("more than {MAX_ELEMENTS} elements")]
    TooMany,
    #[error("no root element")]
    NoRoot,
    #[error("root element is `{got}`, not `{want}`")]
    Root { got: String, want: &'static str },
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("{0}")]
    Syntax(String),
}

/// How a document may be built: how deep its elements nest (the root is
/// depth 1) and which `(parent, child)` names may repeat.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub depth: usize,
    pub repeatable: &'static [(&'static str, &'static str)],
}

/// A document of one root and leaf children: a WeChat notification.
pub const FLAT: Shape = Shape {
    depth: 2,
    repeatable: &[],
};

/// An XML element: its text (for a leaf) or its children, and where it
/// sits in the body (from its `<` to the end of its end tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
    pub span: Range<usize>,
}

impl Element {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the leaf child `name`.
    pub fn leaf(&self, name: &str) -> Option<&str> {
        self.child(name)
            .filter(|c| c.children.is_empty())
            .map(|c| c.text.as_str())
    }
}

/// An element as read: its name and text borrowed from the body where
/// they are one piece of it, as a flat document's always are (a value
/// copied only when references, line ends or several pieces make it).
struct Node<'a> {
    name: Cow<'a, str>,
    text: Cow<'a, str>,
    children: Vec<Node<'a>>,
    span: Range<usize>,
}

impl Node<'_> {
    fn into_element(self) -> Element {
        Element {
            name: self.name.into_owned(),
            text: self.text.into_owned(),
            children: self.children.into_iter().map(Node::into_element).collect(),
            span: self.span,
        }
    }
}

/// The text of an element being read: one piece of the body (borrowed),
/// or the pieces joined (owned).
struct Text<'a>(Cow<'a, [u8]>);

impl<'a> Text<'a> {
    const EMPTY: Text<'static> = Text(Cow::Borrowed(&[]));

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Appends character data or CDATA, line ends normalised.
    fn push(&mut self, piece: Cow<'a, [u8]>) {
        if let Cow::Borrowed(b) = piece
            && self.0.is_empty()
            && !b.contains(&b'\r')
        {
            self.0 = Cow::Borrowed(b);
            return;
        }
        push_normalized(self.joined(), &piece);
    }

    /// The text, to be appended to (copied out of the body first).
    fn joined(&mut self) -> &mut Vec<u8> {
        self.0.to_mut()
    }
}

/// The document being read.
struct Body<'a> {
    bytes: &'a [u8],
    /// `bytes`, when the whole document is UTF-8 (checked once).
    utf8: Option<&'a str>,
}

impl<'a> Body<'a> {
    /// `piece` as UTF-8, or `None`. A piece of a UTF-8 document (a name or
    /// text, cut at ASCII delimiters) is looked up in it instead of
    /// checked again.
    fn str(&self, piece: &'a [u8]) -> Option<&'a str> {
        if let Some(whole) = self.utf8 {
            let at = piece
                .as_ptr()
                .addr()
                .wrapping_sub(self.bytes.as_ptr().addr());
            // The same bytes of the same document, when it holds them.
            if let Some(there) = at
                .checked_add(piece.len())
                .and_then(|end| whole.get(at..end))
            {
                return Some(there);
            }
        }
        std::str::from_utf8(piece).ok()
    }
}

/// An element being read.
struct Open<'a> {
    name: Cow<'a, str>,
    text: Text<'a>,
    children: Vec<Node<'a>>,
    start: usize,
    /// The children's names, once there are [`SCAN_CHILDREN`] of them.
    names: Option<HashSet<Box<str>>>,
}

/// Children compared one by one for a repeated name, up to this many;
/// past it a set: an unsigned body of [`MAX_ELEMENTS`] distinct fields
/// would otherwise cost half a million comparisons (2.6 ms in
/// `primitive/xml_parse_most_fields`) before its signature is looked at.
const SCAN_CHILDREN: usize = 32;

impl<'a> Open<'a> {
    /// Whether a child called `name` was already read.
    fn has_child(&mut self, name: &str) -> bool {
        if self.names.is_none() && self.children.len() < SCAN_CHILDREN {
            return self.children.iter().any(|c| same_name(&c.name, name));
        }
        let children = &self.children;
        self.names
            .get_or_insert_with(|| children.iter().map(|c| (*c.name).into()).collect())
            .contains(name)
    }

    /// Adds a child, once the text so far was found to be XML space. That
    /// text is left behind, as is later space: an element with children
    /// has no text, and text other than space is still kept to be refused
    /// (a leading space changes nothing its checks find).
    fn push_child(&mut self, child: Node<'a>) {
        if let Some(names) = &mut self.names {
            names.insert((*child.name).into());
        }
        self.children.push(child);
        self.text = Text::EMPTY;
    }

    /// Appends character data or CDATA.
    fn push_text(&mut self, piece: Cow<'a, [u8]>) {
        if !self.children.is_empty() && self.text.bytes().is_empty() && xml_space(&piece) {
            return;
        }
        self.text.push(piece);
    }
}

/// `a == b`, the length and the last byte looked at before the bytes are
/// compared (a call to `memcmp`): a flat document's names mostly differ
/// there, and each new child is compared with every earlier one.
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().last() == b.as_bytes().last() && a == b
}

/// Reads `xml` into its root element (see the module doc for what is
/// refused).
pub fn read(xml: &[u8], shape: &Shape) -> Result<Element, XmlError> {
    read_nodes(xml, shape).map(Node::into_element)
}

/// [`read`], names and text borrowed from `xml` where they can be.
fn read_nodes<'a>(xml: &'a [u8], shape: &Shape) -> Result<Node<'a>, XmlError> {
    use quick_xml::events::Event;

    let body = Body {
        bytes: xml,
        utf8: std::str::from_utf8(xml).ok(),
    };
    let mut reader = quick_xml::Reader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.allow_unmatched_ends = false;
    config.trim_text(false);

    let mut stack: Vec<Open<'a>> = Vec::new();
    let mut root: Option<Node<'a>> = None;
    let mut count = 0usize;
    let mut first = true;
    loop {
        // Where the next event starts (an element's `<`, for its span).
        let before = position(&reader);
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(format!("at byte {}: {e}", reader.error_position())))?;
        let at_start = std::mem::replace(&mut first, false);
        match event {
            Event::Eof => break,
            Event::Decl(decl) => {
                if !at_start {
                    return Err(XmlError::Unexpected("XML declaration after the start"));
                }
                if let Some(enc) = decl.encoding() {
                    let enc = enc
                        .map_err(|_| XmlError::Syntax("unreadable encoding declaration".into()))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") && !enc.eq_ignore_ascii_case(b"utf8") {
                        return Err(XmlError::Encoding(shown(&enc)));
                    }
                }
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::PI(_) => return Err(XmlError::Unexpected("processing instruction")),
            Event::Comment(_) => return Err(XmlError::Unexpected("comment")),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlError::Unexpected("second root element"));
            }
            Event::Start(e) => {
                let open = open(&body, &e, before, &stack, shape, &mut count)?;
                stack.push(open);
            }
            Event::Empty(e) => {
                let open = open(&body, &e, before, &stack, shape, &mut count)?;
                close(&body, open, position(&reader), &mut stack, &mut root, shape)?;
            }
            Event::End(_) => {
                let open = stack
                    .pop()
                    .ok_or(XmlError::Unexpected("end tag that closes nothing"))?;
                close(&body, open, position(&reader), &mut stack, &mut root, shape)?;
            }
            Event::Text(t) => match stack.last_mut() {
                Some(open) => open.push_text(t.into_inner()),
                None if xml_space(&t) => {}
                None => return Err(XmlError::Unexpected("text outside the root element")),
            },
            Event::CData(t) => stack
                .last_mut()
                .ok_or(XmlError::Unexpected("CDATA outside the root element"))?
                .push_text(t.into_inner()),
            Event::GeneralRef(r) => {
                let open = stack
                    .last_mut()
                    .ok_or(XmlError::Unexpected("reference outside the root element"))?;
                let c = resolve_reference(&r)?;
                let mut utf8 = [0u8; 4];
                open.text
                    .joined()
                    .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(XmlError::Syntax(format!(
            "the document ends before `{}` closes",
            open.name
        )));
    }
    root.ok_or(XmlError::NoRoot)
}

fn position(reader: &quick_xml::Reader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

/// An element starts at `at`: checked against the shape and counted.
fn open<'a>(
    body: &Body<'a>,
    e: &quick_xml::events::BytesStart<'_>,
    at: usize,
    stack: &[Open<'a>],
    shape: &Shape,
    count: &mut usize,
) -> Result<Open<'a>, XmlError> {
    let utf8 = || XmlError::Utf8("an element name".to_owned());
    let read = e.name().into_inner();
    // The name as it sits in the body, right after the `<` at `at`.
    let from = at.saturating_add(1);
    let name = match body.bytes.get(from..from.saturating_add(read.len())) {
        Some(there) if there == read => Cow::Borrowed(body.str(there).ok_or_else(utf8)?),
        _ => Cow::Owned(String::from_utf8(read.to_vec()).map_err(|_| utf8())?),
    };
    if !xml_chars(name.as_bytes()) {
        return Err(XmlError::Character("an element name".to_owned()));
    }
    if !e.attributes_raw().trim_ascii().is_empty() {
        return Err(XmlError::Attributes(shown(name.as_bytes())));
    }
    *count += 1;
    if *count > MAX_ELEMENTS {
        return Err(XmlError::TooMany);
    }
    if let Some(parent) = stack.last()
        && stack.len() >= shape.depth
    {
        return Err(XmlError::Nesting(shown(parent.name.as_bytes())));
    }
    Ok(Open {
        name,
        text: Text::EMPTY,
        children: Vec::new(),
        start: at,
        names: None,
    })
}

/// An element ends at `end`: it joins its parent, or becomes the root.
fn close<'a>(
    body: &Body<'a>,
    open: Open<'a>,
    end: usize,
    stack: &mut [Open<'a>],
    root: &mut Option<Node<'a>>,
    shape: &Shape,
) -> Result<(), XmlError> {
    // The name as an error shows it: made only when there is an error.
    let shown_name = |name: &str| shown(name.as_bytes());
    let text = match open.text.0 {
        Cow::Borrowed(p) => body.str(p).map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).map(Cow::Owned).ok(),
    };
    let Some(mut text) = text else {
        let name = shown_name(&open.name);
        return Err(XmlError::Utf8(format!("element `{name}`")));
    };
    if !xml_chars(text.as_bytes()) {
        let name = shown_name(&open.name);
        return Err(XmlError::Character(format!("element `{name}`")));
    }
    if !open.children.is_empty() {
        if !xml_space(text.as_bytes()) {
            return Err(XmlError::Nesting(shown_name(&open.name)));
        }
        text = Cow::Borrowed("");
    }
    let element = Node {
        name: open.name,
        text,
        children: open.children,
        span: open.start..end,
    };
    let depth = stack.len();
    match stack.last_mut() {
        Some(parent) => {
            // Room for a notification's fields at once, not four
            // doublings; for the root only, one per document.
            if depth == 1 && parent.children.capacity() == 0 {
                parent.children.reserve_exact(SCAN_CHILDREN);
            }
            if !xml_space(parent.text.bytes()) {
                return Err(XmlError::Nesting(shown(parent.name.as_bytes())));
            }
            // The shape's few pairs first: a repeatable child is never
            // looked for.
            if !shape.repeatable.contains(&(&*parent.name, &*element.name))
                && parent.has_child(&element.name)
            {
                return Err(XmlError::Repeated(shown_name(&element.name)));
            }
            parent.push_child(element);
        }
        None => *root = Some(element),
    }
    Ok(())
}

/// Whether UTF-8 `text` holds only characters XML 1.0 allows (`Char`):
/// no C0 control but tab, LF and CR, no U+FFFE or U+FFFF (surrogates
/// cannot occur in UTF-8).
fn xml_chars(text: &[u8]) -> bool {
    plain_chars(text) || xml_chars_exactly(text)
}

/// Whether `text` has no byte below 0x20 and no 0xEF, eight bytes at a
/// time: then [`xml_chars_exactly`] would find nothing either (no control
/// at all, and every noncharacter starts with 0xEF). A notification's
/// names and values have neither; the byte-by-byte check of each cost
/// about 1,500 instructions of a WeChat body's parse. False, to have that
/// check decide, when there is any.
fn plain_chars(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Some byte of `x` is below `n` (n <= 0x80): exact as to whether any is.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    let mut chunks = text.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        let x = u64::from_le_bytes(eight);
        if below(x, 0x20) || below(x ^ (ONES * 0xEF), 1) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b >= 0x20 && b != 0xEF)
}

/// [`xml_chars`], byte by byte.
fn xml_chars_exactly(text: &[u8]) -> bool {
    let control = |b: &u8| *b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r');
    let noncharacter = |w: &[u8]| w[0] == 0xEF && w[1] == 0xBF && (w[2] == 0xBE || w[2] == 0xBF);
    !text.iter().any(control) && (!text.contains(&0xEF) || !text.windows(3).any(noncharacter))
}

/// XML's whitespace only: space, tab, CR, LF.
fn xml_space(text: &[u8]) -> bool {
    text.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Appends text with XML 1.0 line-end normalisation (CR LF and lone CR
/// become LF), as every conforming parser reports it.
fn push_normalized(value: &mut Vec<u8>, text: &[u8]) {
    if !text.contains(&b'\r') {
        value.extend_from_slice(text);
        return;
    }
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' => {
                value.push(b'\n');
                if text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => value.push(b),
        }
        i += 1;
    }
}

/// The five predefined entities and character references; anything else
/// would need a DTD, which is never accepted.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, XmlError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) if c != '\0' => Ok(c),
            _ => Err(XmlError::Reference(format!(
                "bad character reference `&{};`",
                shown(r)
            ))),
        };
    }
    match &**r {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        other => Err(XmlError::Reference(format!(
            "undeclared entity `&{};`",
            shown(other)
        ))),
    }
}

// === the flat map (WeChat Pay v2) ===

/// A flat XML document: the root element's name and its direct children,
/// each name once, sorted by name. Names and values are UTF-8.
///
/// One buffer, shared, not copied: the root's name, then every field's
/// name and value in name order, sit back to back in `text`, and `fields`
/// indexes it (as `body::Form` does). A `Verified` keeps the map its
/// signature was checked over: a clone is two reference counts. A parse
/// allocates the text and the index, not a `String` per name and value.
///
/// Two maps are equal when their roots and their fields (name, value and
/// where the element sits in the body) are.
#[derive(Clone)]
pub struct XmlMap {
    /// The root's name, then each field's name and value, in the order of
    /// `fields`, with nothing between them.
    text: Arc<str>,
    /// Where the root's name ends in `text` (it starts at 0).
    root: usize,
    /// The fields, sorted by name bytes.
    fields: Arc<[Field]>,
}

/// One field of an [`XmlMap`]: where its name and value sit in the map's
/// text, and its element in the body.
#[derive(Debug, Clone)]
struct Field {
    /// The name's first 8 bytes ([`key`]): most lookups are told apart by
    /// it, without reading the text.
    key: u64,
    name: Range<usize>,
    /// The value runs from `name.end` to here.
    value_end: usize,
    span: Range<usize>,
}

/// The first 8 bytes of `name` as a big-endian number, zeros after a
/// shorter one: two names whose keys differ are in the order of their
/// keys (bytes compared in turn, the shorter name first when it is a
/// prefix), so only equal keys need the names themselves compared.
fn key(name: &[u8]) -> u64 {
    match name.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        None => {
            let k = name.iter().fold(0, |k, &b| (k << 8) | u64::from(b));
            // `name` is shorter than 8 bytes: the shift is 8 to 64 bits.
            k.checked_shl(8 * (8 - name.len() as u32)).unwrap_or(0)
        }
    }
}

impl XmlMap {
    /// Parses a flat XML document (see the module doc for what is refused).
    pub fn parse(body: &[u8]) -> Result<XmlMap, ParseError> {
        if body.trim_ascii().is_empty() {
            return Err(ParseError::Empty);
        }
        let root = read_nodes(body, &FLAT).map_err(|e| match e {
            XmlError::Doctype => ParseError::Doctype,
            XmlError::Repeated(key) => ParseError::DuplicateKey { key },
            XmlError::Nesting(element) => ParseError::XmlNesting { element },
            other => ParseError::Xml {
                reason: other.to_string(),
            },
        })?;
        // `<xml/>` holds nothing at all.
        if body
            .get(root.span.clone())
            .is_some_and(|tag| tag.ends_with(b"/>"))
        {
            return Err(ParseError::Empty);
        }
        if !xml_space(root.text.as_bytes()) {
            return Err(ParseError::Xml {
                reason: "text outside the fields".to_owned(),
            });
        }
        let mut children = root.children;
        children.sort_unstable_by(|a, b| name_cmp(a.name.as_bytes(), b.name.as_bytes()));
        Ok(XmlMap::build(
            &root.name,
            children
                .iter()
                .map(|c| (&*c.name, &*c.text, c.span.clone())),
        ))
    }

    /// The map of `root` and `fields` (sorted by name, each name once):
    /// the text laid out, one allocation for it and one for the index.
    fn build<'a, I>(root: &str, fields: I) -> XmlMap
    where
        I: Iterator<Item = (&'a str, &'a str, Range<usize>)> + Clone,
    {
        let size = fields.clone().fold(root.len(), |n, (name, value, _)| {
            n + name.len() + value.len()
        });
        let mut text = String::with_capacity(size);
        text.push_str(root);
        // One allocation when `fields` knows its length (a slice's does).
        let fields: Arc<[Field]> = fields
            .map(|(name, value, span)| {
                let at = text.len();
                text.push_str(name);
                let name_end = text.len();
                text.push_str(value);
                Field {
                    key: key(name.as_bytes()),
                    name: at..name_end,
                    value_end: text.len(),
                    span,
                }
            })
            .collect();
        XmlMap {
            text: text.into(),
            root: root.len(),
            fields,
        }
    }

    /// The piece `range` of the text: a name or a value, cut where it was
    /// put (so always a `str` boundary).
    fn str(&self, range: Range<usize>) -> &str {
        self.text.get(range).unwrap_or_default()
    }

    /// The root element's name.
    pub fn root(&self) -> &str {
        self.str(0..self.root)
    }

    /// The field called `name`: its key compared first, then, when the keys
    /// are equal, the lengths of two names the keys hold whole, or else
    /// the names (as bytes: the order `str` has, and a byte cut is not
    /// looked at for a boundary).
    fn find(&self, name: &str) -> Option<&Field> {
        let (text, name) = (self.text.as_bytes(), name.as_bytes());
        let want = key(name);
        self.fields
            .binary_search_by(|f| {
                f.key.cmp(&want).then_with(|| {
                    if f.name.len() <= 8 && name.len() <= 8 {
                        // The longer one goes on with zeros: it is after.
                        f.name.len().cmp(&name.len())
                    } else {
                        text.get(f.name.clone()).unwrap_or_default().cmp(name)
                    }
                })
            })
            .ok()
            .and_then(|i| self.fields.get(i))
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).map(|f| self.str(f.name.end..f.value_end))
    }

    /// The bytes of the body where element `name` sits, from its `<` to the
    /// end of its closing tag.
    pub fn span(&self, name: &str) -> Option<Range<usize>> {
        self.find(name).map(|f| f.span.clone())
    }

    /// The same document without the elements named in `names` (its text
    /// laid out again: the rest of the map reads it in one walk).
    pub fn without(&self, names: &[String]) -> XmlMap {
        if names.is_empty() {
            return self.clone();
        }
        let kept: Vec<_> = self
            .entries()
            .filter(|(name, ..)| !names.iter().any(|n| n == name))
            .map(|(name, value, span)| (name, value, span.clone()))
            .collect();
        XmlMap::build(self.root(), kept.iter().cloned())
    }

    /// (name, value) pairs sorted by name bytes: the text walked once,
    /// each piece cut off its front.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut rest = self.text.get(self.root..).unwrap_or_default();
        self.fields.iter().map(move |f| {
            let (name, after) = rest.split_at_checked(f.name.len()).unwrap_or_default();
            let (value, after) = after
                .split_at_checked(f.value_end.saturating_sub(f.name.end))
                .unwrap_or_default();
            rest = after;
            (name, value)
        })
    }

    /// (name, value, span) of each field, sorted by name bytes.
    fn entries(&self) -> impl Iterator<Item = (&str, &str, &Range<usize>)> + '_ {
        self.iter()
            .zip(self.fields.iter())
            .map(|((name, value), f)| (name, value, &f.span))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl PartialEq for XmlMap {
    fn eq(&self, other: &XmlMap) -> bool {
        self.root() == other.root()
            && self.len() == other.len()
            && self.entries().eq(other.entries())
    }
}

impl Eq for XmlMap {}

/// The root and the fields as (name, value, span): what the map holds, not
/// how its text is laid out.
impl std::fmt::Debug for XmlMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Entries<'a>(&'a XmlMap);
        impl std::fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries(self.0.entries()).finish()
            }
        }
        f.debug_struct("XmlMap")
            .field("root", &self.root())
            .field("fields", &Entries(self))
            .finish()
    }
}

/// Names in byte order (`str`'s `Ord`), the first bytes compared first:
/// most names differ there, and a call to `memcmp` costs more than that
/// comparison.
fn name_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let first = |s: &[u8]| s.first().copied();
    first(a).cmp(&first(b)).then_with(|| a.cmp(b))
}

/// `body` without the byte ranges `cut` (sorted, not overlapping).
pub fn strip_ranges(body: &[u8], cut: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for r in cut {
        if let Some(kept) = body.get(at..r.start) {
            out.extend_from_slice(kept);
        }
        at = at.max(r.end);
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

// === the envelope (JD Pay) ===

/// How deep a JD envelope nests: `jdpay` / `result` / `code`.
const ENVELOPE: Shape = Shape {
    depth: 3,
    repeatable: &[],
};

/// The outer `<jdpay>` document of a JD Pay notification (not signed
/// itself: `provider::jdpay` opens and checks what `encrypt` holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub version: String,
    pub merchant: String,
    /// `result`, when present: `code` (`000000` is success) and `desc`.
    pub result: Option<EnvelopeResult>,
    pub encrypt: String,
    /// Where in the body the root's other children sit. JD sends none; no
    /// signature covers them, so they never reach the shop.
    pub others: Vec<Range<usize>>,
}

/// The envelope's `result`: its leaves as written, and where it sits in the
/// body (JD repeats the signed payload's `result` there; an envelope's
/// that differs is left out of what the shop receives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeResult {
    pub leaves: Vec<(String, String)>,
    pub span: Range<usize>,
}

impl EnvelopeResult {
    /// The text of leaf `name`, trimmed.
    pub fn leaf(&self, name: &str) -> Option<&str> {
        self.leaves
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.trim())
    }
}

/// The children of `<jdpay>` a JD notification carries.
const ENVELOPE_CHILDREN: [&str; 4] = ["version", "merchant", "result", "encrypt"];

impl Envelope {
    /// Parses the envelope: one `jdpay` root whose children are text
    /// leaves, except `result`, whose children are text leaves. Never
    /// panics.
    pub fn parse(body: &[u8]) -> Result<Envelope, XmlError> {
        // JD's demo reads the body line by line; tolerate leading blank lines.
        let start = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(body.len());
        let text = std::str::from_utf8(&body[start..])
            .map_err(|_| XmlError::Utf8("the envelope".to_owned()))?;
        let root = read(text.as_bytes(), &ENVELOPE)?;
        if root.name != "jdpay" {
            return Err(XmlError::Root {
                got: shown(root.name.as_bytes()),
                want: "jdpay",
            });
        }
        if let Some(c) = root
            .children
            .iter()
            .find(|c| c.name != "result" && !c.children.is_empty())
        {
            return Err(XmlError::Nesting(shown(c.name.as_bytes())));
        }
        let in_body = |span: &Range<usize>| span.start + start..span.end + start;
        let leaf = |name: &'static str| {
            root.leaf(name)
                .map(|t| t.trim().to_owned())
                .ok_or(XmlError::Missing(name))
        };
        Ok(Envelope {
            version: leaf("version")?,
            merchant: leaf("merchant")?,
            result: root.child("result").map(|r| EnvelopeResult {
                leaves: r
                    .children
                    .iter()
                    .map(|c| (c.name.clone(), c.text.clone()))
                    .collect(),
                span: in_body(&r.span),
            }),
            encrypt: leaf("encrypt")?,
            others: root
                .children
                .iter()
                .filter(|c| !ENVELOPE_CHILDREN.contains(&c.name.as_str()))
                .map(|c| in_body(&c.span))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time pre-check never passes what the byte-by-byte
    /// check refuses: every byte value at every offset of short and long
    /// texts, and the noncharacters split across chunks.
    #[test]
    fn the_plain_precheck_never_passes_a_refused_character() {
        let mut seen_plain = 0;
        for len in [1usize, 7, 8, 9, 16, 23] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    if plain_chars(&text) {
                        assert!(xml_chars_exactly(&text), "{b:#x} at {at} of {len}");
                        seen_plain += 1;
                    }
                    assert_eq!(
                        xml_chars(&text),
                        xml_chars_exactly(&text),
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(seen_plain > 0);
        for at in 0..14 {
            for last in [0xBE, 0xBF, 0xBD] {
                let mut text = vec![b'x'; 16];
                text[at..at + 3].copy_from_slice(&[0xEF, 0xBF, last]);
                assert!(!plain_chars(&text));
                assert_eq!(xml_chars(&text), xml_chars_exactly(&text), "{at} {last:#x}");
            }
        }
    }

    #[test]
    fn xml_flat_fields_with_cdata_text_and_entities() {
        let x = XmlMap::parse(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<xml>\n <b><![CDATA[x<y]]></b>\n \
              <a>1 &amp; 2 &lt;&#x4E3B;&#24215;&gt;</a><c/><d></d><e>l1\r\nl2\rl3</e>\n</xml>\n",
        )
        .unwrap();
        assert_eq!(x.root(), "xml");
        assert_eq!(x.get("a"), Some("1 & 2 <主店>"));
        assert_eq!(x.get("b"), Some("x<y"));
        assert_eq!(x.get("c"), Some(""));
        assert_eq!(x.get("d"), Some(""));
        assert_eq!(x.get("e"), Some("l1\nl2\nl3"));
        let names: Vec<&str> = x.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // A CDATA section split in two, and text around it, concatenate.
        let x = XmlMap::parse(b"<xml><a>p<![CDATA[]]]]><![CDATA[>]]>q</a></xml>").unwrap();
        assert_eq!(x.get("a"), Some("p]]>q"));
    }

    /// Names and values share one text: each is cut where it was put,
    /// whatever sits around it (a prefix of another name, a value decoded
    /// longer or shorter than the body holds it, an empty one), `without`
    /// keeps the others' places, and equality looks at fields, not text.
    #[test]
    fn names_and_values_are_cut_where_they_were_put() {
        let body = "<xml><abc>3</abc><ab><![CDATA[x<y]]></ab><a>&amp;&#x4E3B;</a>\
                    <b/><abcd>l1\r\nl2</abcd><c>\u{5E97}</c></xml>";
        let x = XmlMap::parse(body.as_bytes()).unwrap();
        let want = [
            ("a", "&\u{4E3B}"),
            ("ab", "x<y"),
            ("abc", "3"),
            ("abcd", "l1\nl2"),
            ("b", ""),
            ("c", "\u{5E97}"),
        ];
        assert_eq!(x.iter().collect::<Vec<_>>(), want);
        assert_eq!((x.root(), x.len()), ("xml", 6));
        for (name, value) in want {
            assert_eq!(x.get(name), Some(value), "{name}");
            let element = &body[x.span(name).unwrap()];
            assert!(element.starts_with(&format!("<{name}")), "{element}");
            assert!(element.ends_with(&format!("</{name}>")) || element.ends_with("/>"));
        }
        assert_eq!((x.get("abcde"), x.get("x"), x.get("")), (None, None, None));

        let cut = x.without(&["ab".to_owned(), "b".to_owned(), "nope".to_owned()]);
        assert_eq!(
            cut.iter().collect::<Vec<_>>(),
            [want[0], want[2], want[3], want[5]]
        );
        assert_eq!(
            (cut.get("ab"), cut.get("b"), cut.span("ab")),
            (None, None, None)
        );
        assert_eq!(cut.get("abcd"), Some("l1\nl2"));
        assert_eq!(cut.span("c"), x.span("c"));
        assert_eq!(cut.root(), "xml");
        assert_ne!(cut, x);
        assert_eq!(x.without(&[]), x);
        let again = XmlMap::parse(body.as_bytes()).unwrap();
        assert_eq!(again, x);
        assert_eq!(format!("{again:?}"), format!("{x:?}"));

        // The same text, "xmlabc", and the same spans, cut in other places.
        let ab = XmlMap::parse(b"<xml><ab>c</ab></xml>").unwrap();
        let a = XmlMap::parse(b"<xml><a>bc</a ></xml>").unwrap();
        assert_eq!((ab.span("ab"), a.span("a")), (Some(5..15), Some(5..15)));
        assert_ne!(ab, a);
        // The same fields under another root, and elsewhere in the body.
        let lmx = XmlMap::parse(b"<lmx><ab>c</ab></lmx>").unwrap();
        assert_eq!(lmx.iter().collect::<Vec<_>>(), [("ab", "c")]);
        assert_ne!(lmx, ab);
        let moved = XmlMap::parse(b"<xml> <ab>c</ab></xml>").unwrap();
        assert_eq!(moved.iter().collect::<Vec<_>>(), [("ab", "c")]);
        assert_ne!(moved, ab);
        assert_eq!(ab, XmlMap::parse(b"<xml><ab>c</ab>\n</xml>").unwrap());

        // Names alike in their first 8 bytes, or shorter than 8.
        let names = [
            "out_trade",
            "out_trade_no",
            "out_trade_no2",
            "out_trad",
            "out_tra",
            "out_trb",
            "out_trade_nn",
            "o",
            "p",
        ];
        let body: String = names.iter().map(|n| format!("<{n}>={n}</{n}>")).collect();
        let x = XmlMap::parse(format!("<xml>{body}</xml>").as_bytes()).unwrap();
        let mut sorted = names;
        sorted.sort_unstable();
        let got: Vec<_> = x.iter().map(|(k, _)| k).collect();
        assert_eq!(got, sorted);
        for name in names {
            assert_eq!(x.get(name), Some(format!("={name}").as_str()), "{name}");
        }
        for absent in [
            "out_trade_n",
            "out_trade_no1",
            "out_trade_no3",
            "out_tr",
            "out_trc",
            "n",
            "q",
            "o\0",
            "out_tra\0",
            "out_trad\0",
            "",
        ] {
            assert_eq!(x.get(absent), None, "{absent}");
        }
        let cut = x.without(&["out_trade_no".to_owned(), "o".to_owned()]);
        assert_eq!(cut.len(), names.len() - 2);
        assert_eq!(cut.get("out_trade_no"), None);
        assert_eq!(cut.get("out_trade_no2"), Some("=out_trade_no2"));
        assert_eq!(cut.get("out_trade_nn"), Some("=out_trade_nn"));
    }

    #[test]
    fn characters_xml_forbids_are_refused() {
        for bad in [
            &b"<xml><a>1&#1;</a></xml>"[..],
            b"<xml><a>1&#x1F;</a></xml>",
            b"<xml><a>1\x01</a></xml>",
            b"<xml><a><![CDATA[1\x0B]]></a></xml>",
            b"<xml><a>&#xFFFE;</a></xml>",
            b"<xml><a>\xEF\xBF\xBF</a></xml>",
            b"<xml><a\x01>1</a\x01></xml>",
        ] {
            assert!(
                matches!(read(bad, &FLAT), Err(XmlError::Character(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Tab, LF and CR are XML characters, as themselves or referenced.
        let x = XmlMap::parse(b"<xml><a>1\t2&#9;&#10;&#13;\xEF\xBF\xBD</a></xml>").unwrap();
        assert_eq!(x.get("a"), Some("1\t2\t\n\r\u{FFFD}"));
    }

    /// A flat document of `n` distinct fields, then `extra` fields.
    fn fields(n: usize, extra: &[&str]) -> Vec<u8> {
        let mut xml = b"<xml>".to_vec();
        for i in 0..n {
            xml.extend_from_slice(format!("<f{i}>{i}</f{i}>").as_bytes());
        }
        for name in extra {
            xml.extend_from_slice(format!("<{name}>x</{name}>").as_bytes());
        }
        xml.extend_from_slice(b"</xml>");
        xml
    }

    #[test]
    fn a_repeat_is_found_among_many_fields_as_among_few() {
        for n in [1, SCAN_CHILDREN - 1, SCAN_CHILDREN, SCAN_CHILDREN + 1, 500] {
            let map = XmlMap::parse(&fields(n, &[])).unwrap();
            assert_eq!(map.len(), n);
            for repeated in ["f0", &format!("f{}", n - 1), &format!("f{}", n / 2)] {
                let err = XmlMap::parse(&fields(n, &["g", repeated])).unwrap_err();
                assert!(
                    matches!(&err, ParseError::DuplicateKey { key } if key == repeated),
                    "{n} fields, {repeated} again: {err:?}"
                );
            }
            // A repeat after the set was built, of a field added after it.
            let err = XmlMap::parse(&fields(n, &["g", "h", "g"])).unwrap_err();
            assert!(
                matches!(&err, ParseError::DuplicateKey { key } if key == "g"),
                "{err:?}"
            );
        }
        // The most fields a document may have, all distinct.
        let most = XmlMap::parse(&fields(MAX_ELEMENTS - 1, &[])).unwrap();
        assert_eq!(most.len(), MAX_ELEMENTS - 1);
        assert!(XmlMap::parse(&fields(MAX_ELEMENTS, &[])).is_err());
    }

    #[test]
    fn xml_refusals() {
        let refused: &[(&[u8], &str)] = &[
            (
                b"<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><a>&e;</a></xml>",
                "doctype",
            ),
            (
                b"<!DOCTYPE xml><xml><a>1</a></xml>",
                "doctype without entities",
            ),
            (b"<xml><a>&e;</a></xml>", "undeclared entity"),
            (b"<xml><a>1</a><a>2</a></xml>", "repeated element"),
            (b"<xml><a><b>1</b></a></xml>", "nesting"),
            (b"<xml><a><b/></a></xml>", "nested empty element"),
            (b"<xml><a x=\"1\">1</a></xml>", "attributes"),
            (b"<xml y=\"1\"><a>1</a></xml>", "root attributes"),
            (b"<xml><!-- c --><a>1</a></xml>", "comment"),
            (b"<xml><?pi x?><a>1</a></xml>", "processing instruction"),
            (b"<xml>text<a>1</a></xml>", "text in the root"),
            (b"<xml><a>1</a></xml>trailing", "text after the root"),
            (b"<xml><a>1</a></xml><xml></xml>", "two roots"),
            (b"<xml><a>1</a>", "unclosed root"),
            (b"<xml><a>1</b></xml>", "mismatched end"),
            (b"<xml><a>\xff</a></xml>", "not UTF-8"),
            (
                b"<?xml version=\"1.0\" encoding=\"GBK\"?><xml><a>1</a></xml>",
                "GBK",
            ),
            (b"<xml><a>&#0;</a></xml>", "NUL reference"),
            (b"<xml/>", "empty root"),
            (b"", "empty"),
            (b"  \n", "blank"),
            (
                b"<xml><a>1</a></xml><?xml version=\"1.0\"?>",
                "late declaration",
            ),
            (b"<![CDATA[x]]><xml><a>1</a></xml>", "CDATA outside"),
        ];
        for (body, why) in refused {
            assert!(XmlMap::parse(body).is_err(), "{why}");
        }
        assert_eq!(
            XmlMap::parse(
                b"<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>"
            )
            .unwrap_err(),
            ParseError::Doctype
        );
        assert_eq!(
            XmlMap::parse(b"<xml><a>1</a><a>1</a></xml>").unwrap_err(),
            ParseError::DuplicateKey { key: "a".into() }
        );
        assert_eq!(
            XmlMap::parse(b"<xml><a><b>1</b></a></xml>").unwrap_err(),
            ParseError::XmlNesting {
                element: "a".into()
            }
        );
    }

    /// Names and text are borrowed from the body, space after a child is
    /// let go, and a UTF-8 body is checked once: none of it changes what
    /// is refused, or why.
    #[test]
    fn borrowed_text_is_refused_as_copied_text_was() {
        let utf8 = |e: XmlError| matches!(e, XmlError::Utf8(_));
        let nesting = |e: XmlError| matches!(e, XmlError::Nesting(n) if n == "xml");
        type Want<'a> = &'a dyn Fn(XmlError) -> bool;
        let cases: &[(&[u8], Want)] = &[
            // A character split by a space after the last child.
            (b"<xml><a>1</a>\xE4\xB8<![CDATA[ ]]>\xAD</xml>", &utf8),
            (b"<xml><a>1</a> \xE4\xB8\xAD</xml>", &nesting),
            (b"<xml><a>1</a> x<b>2</b></xml>", &nesting),
            (b"<xml><a>1</a><![CDATA[ ]]>&amp;</xml>", &nesting),
            (b"<xml><a>\xE4\xB8</a></xml>", &utf8),
            (b"<xml><a\xFF>1</a\xFF></xml>", &utf8),
            (b"<xml x=\"\xFF\"><a>1</a></xml>", &|e| {
                matches!(e, XmlError::Attributes(_))
            }),
        ];
        for (doc, want) in cases {
            let got = read(doc, &FLAT).unwrap_err();
            assert!(
                want(got.clone()),
                "{}: {got:?}",
                String::from_utf8_lossy(doc)
            );
        }
        // Space, as itself, in CDATA or referenced, after the children.
        let x =
            XmlMap::parse(b"<xml>\n<a> 1\r\n</a>\n<![CDATA[ ]]>&#32;&#10;<b>2</b> </xml>").unwrap();
        assert_eq!((x.get("a"), x.get("b")), (Some(" 1\n"), Some("2")));
        // Text in pieces is joined.
        let x = read(b"<xml><a>p&amp;<![CDATA[q]]>r</a></xml>", &FLAT).unwrap();
        assert_eq!(x.leaf("a"), Some("p&qr"));
    }

    #[test]
    fn envelope_parser_refuses_what_it_should() {
        let ok = b"<jdpay><version>V2.0</version><merchant>1</merchant><result><code>000000</code><desc>x</desc></result><encrypt>QQ==</encrypt></jdpay>";
        let e = Envelope::parse(ok).unwrap();
        assert_eq!(
            (
                e.version.as_str(),
                e.result.as_ref().and_then(|r| r.leaf("code"))
            ),
            ("V2.0", Some("000000"))
        );
        assert!(e.others.is_empty());
        for (bad, why) in [
            (&b"<!DOCTYPE x [<!ENTITY a \"b\">]><jdpay/>"[..], "doctype"),
            (b"<jdpay><version>&a;</version></jdpay>", "entity"),
            (
                b"<jdpay><merchant>1</merchant><merchant>2</merchant></jdpay>",
                "repeat",
            ),
            (b"<jdpay><merchant><x>1</x></merchant></jdpay>", "nesting"),
            (b"<jdpay><result><code><x/></code></result></jdpay>", "deep"),
            (b"<jdpay><version>V2.0</version>", "unclosed"),
            (b"<jdpay a=\"1\"></jdpay>", "attribute"),
            (b"<jdpay><!-- c --></jdpay>", "comment"),
            (b"<xml><encrypt>1</encrypt></xml>", "root"),
            (b"<jdpay>text<merchant>1</merchant></jdpay>", "mixed"),
            (b"<jdpay></jdpay><jdpay></jdpay>", "two roots"),
            (
                b"<jdpay><version>V2.0</version><merchant>1</merchant></jdpay>",
                "no encrypt",
            ),
            (b"\xff<jdpay/>", "utf8"),
        ] {
            assert!(Envelope::parse(bad).is_err(), "{why}");
        }
        // Character references and the predefined entities are fine.
        let e = Envelope::parse(
            b"<jdpay><version>V2.0</version><merchant>&#49;&amp;</merchant><encrypt><![CDATA[QQ==]]></encrypt></jdpay>",
        )
        .unwrap();
        assert_eq!((e.merchant.as_str(), e.encrypt.as_str()), ("1&", "QQ=="));
    }

    #[test]
    fn wechat_bodies_and_jd_envelopes_follow_the_same_rules() {
        let many = format!("<ROOT>{}</ROOT>", "<a/>".repeat(MAX_ELEMENTS));
        let refused: &[(&str, &[u8])] = &[
            (
                "doctype",
                b"<!DOCTYPE ROOT><ROOT><version>1</version></ROOT>",
            ),
            ("comment", b"<ROOT><!-- c --><version>1</version></ROOT>"),
            (
                "processing instruction",
                b"<ROOT><?pi x?><version>1</version></ROOT>",
            ),
            ("attribute", b"<ROOT><version x=\"1\">1</version></ROOT>"),
            (
                "declared GBK",
                b"<?xml version=\"1.0\" encoding=\"GBK\"?><ROOT><version>1</version></ROOT>",
            ),
            (
                "late declaration",
                b"<ROOT><version>1</version></ROOT><?xml version=\"1.0\"?>",
            ),
            ("undeclared entity", b"<ROOT><version>&e;</version></ROOT>"),
            ("NUL reference", b"<ROOT><version>&#0;</version></ROOT>"),
            (
                "text beside elements",
                b"<ROOT>text<version>1</version></ROOT>",
            ),
            (
                "ideographic space beside elements",
                "<ROOT>\u{3000}<version>1</version></ROOT>".as_bytes(),
            ),
            ("second root", b"<ROOT><version>1</version></ROOT><ROOT/>"),
            (
                "repeated element",
                b"<ROOT><version>1</version><version>1</version></ROOT>",
            ),
            ("value not UTF-8", b"<ROOT><version>\xff</version></ROOT>"),
            ("unclosed", b"<ROOT><version>1</version>"),
            ("too many elements", many.as_bytes()),
        ];
        for (why, doc) in refused {
            let wechat = String::from_utf8_lossy(doc).replace("ROOT", "xml");
            let jd = String::from_utf8_lossy(doc).replace("ROOT", "jdpay");
            let (wechat, jd) = if why.contains("UTF-8") {
                (doc.to_vec(), doc.to_vec())
            } else {
                (wechat.into_bytes(), jd.into_bytes())
            };
            assert!(XmlMap::parse(&wechat).is_err(), "wechat: {why}");
            assert!(Envelope::parse(&jd).is_err(), "jd: {why}");
        }
        // Line ends are normalised in both.
        let x = XmlMap::parse(b"<xml><a>1\r\n2</a></xml>").unwrap();
        assert_eq!(x.get("a"), Some("1\n2"));
        let e = Envelope::parse(
            b"<jdpay><version>V2.0</version><merchant>1\r2</merchant><encrypt>QQ==</encrypt></jdpay>",
        )
        .unwrap();
        assert_eq!(e.merchant, "1\n2");
    }
}
