//! The tantivy schema: which fields a file's document has, how words are analysed, and the
//! conversion between a [`FileRecord`] and its document.
//!
//! One document per (leaf, file id). Word fields (name, folders, tags, year) are analysed with
//! [`ANALYZER`]; the record itself is kept in stored fields so a hit returns it whole.

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TantivyDocument, TextFieldIndexing, TextOptions, Value, FAST,
    INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer, TokenizerManager,
};
use tantivy::Term;
use wire::{FileId, FileRecord, Tags};

use crate::{IndexError, LeafKey};

/// The name the word analyzer is registered under.
pub(crate) const ANALYZER: &str = "canopy_words";

/// The word analyzer: split on anything that is not a letter or digit, lower-case, fold accents
/// to ASCII ("Motörhead" gives "motorhead"). Used for the documents and for queries alike.
pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Registers [`analyzer`] under [`ANALYZER`].
pub(crate) fn register(tokenizers: &TokenizerManager) {
    tokenizers.register(ANALYZER, analyzer());
}

/// The words of `text` as [`analyzer`] gives them, each once, in order of first appearance.
pub(crate) fn words(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        let token = &stream.token().text;
        if seen.insert(token.clone()) {
            out.push(token.clone());
        }
    }
    out
}

/// The key of one (leaf, file) record: the leaf key, big-endian, then the file id.
fn leaf_file_key(leaf: LeafKey, id: &FileId) -> [u8; 8 + FileId::LEN] {
    let mut key = [0u8; 8 + FileId::LEN];
    key[..8].copy_from_slice(&leaf.to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

/// The fields of the schema.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    /// The leaf that registered the file: indexed (remove a whole leaf), stored.
    pub leaf: Field,
    /// Leaf key (8 bytes, big-endian) followed by the file id: the key of one record, for
    /// replacing and removing it.
    pub leaf_file: Field,
    /// Content id bytes: indexed (search by id), stored.
    pub id: Field,
    /// Size in bytes: fast (size filters), stored.
    pub size: Field,
    /// Lower-case extension, untokenised (extension filter).
    pub ext: Field,
    /// The whole path, stored only.
    pub path: Field,
    /// Words of the file name (extension included).
    pub name: Field,
    /// Words of the folders above the file (the shared folder's name first).
    pub folders: Field,
    /// Artist tag: words, and the text stored.
    pub artist: Field,
    /// Album tag: words, and the text stored.
    pub album: Field,
    /// Title tag: words, and the text stored.
    pub title: Field,
    /// Genre tag: words, and the text stored.
    pub genre: Field,
    /// Year tag as a word, so "1977" finds files from that year.
    pub year_word: Field,
    /// Year tag, stored.
    pub year: Field,
    /// Duration tag in seconds, stored.
    pub duration: Field,
    /// Audio bitrate in kbit/s, stored.
    pub bitrate: Field,
}

impl Fields {
    /// Builds the schema and the handles of its fields.
    pub fn schema() -> (Schema, Fields) {
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs);
        let words = TextOptions::default().set_indexing_options(indexing);
        let stored_words = words.clone().set_stored();

        let mut b = Schema::builder();
        let fields = Fields {
            leaf: b.add_u64_field("leaf", INDEXED | STORED),
            leaf_file: b.add_bytes_field("leaf_file", INDEXED),
            id: b.add_bytes_field("id", INDEXED | STORED),
            size: b.add_u64_field("size", FAST | STORED),
            ext: b.add_text_field("ext", STRING),
            path: b.add_text_field("path", STORED),
            name: b.add_text_field("name", words.clone()),
            folders: b.add_text_field("folders", words.clone()),
            artist: b.add_text_field("artist", stored_words.clone()),
            album: b.add_text_field("album", stored_words.clone()),
            title: b.add_text_field("title", stored_words.clone()),
            genre: b.add_text_field("genre", stored_words),
            year_word: b.add_text_field("year_word", words),
            year: b.add_u64_field("year", STORED),
            duration: b.add_u64_field("duration", STORED),
            bitrate: b.add_u64_field("bitrate", STORED),
        };
        (b.build(), fields)
    }

    /// The fields a query word may match in, with their boosts. The name and the title say what
    /// a file is, so they weigh most; folders often repeat artist and album, and genre and year
    /// are broad.
    pub fn word_fields(&self) -> [(Field, f32); 7] {
        [
            (self.name, 2.0),
            (self.title, 2.0),
            (self.artist, 1.5),
            (self.album, 1.0),
            (self.folders, 1.0),
            (self.genre, 0.5),
            (self.year_word, 0.5),
        ]
    }

    /// The key term of one (leaf, file) record.
    pub fn leaf_file_term(&self, leaf: LeafKey, id: &FileId) -> Term {
        Term::from_field_bytes(self.leaf_file, &leaf_file_key(leaf, id))
    }

    /// The document of `file` as registered by `leaf`.
    pub fn document(&self, leaf: LeafKey, file: &FileRecord) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_u64(self.leaf, leaf);
        doc.add_bytes(self.leaf_file, &leaf_file_key(leaf, &file.id));
        doc.add_bytes(self.id, file.id.as_bytes());
        doc.add_u64(self.size, file.size);
        if let Some(ext) = file.extension() {
            doc.add_text(self.ext, ext);
        }
        doc.add_text(self.path, &file.path);
        doc.add_text(self.name, file.name());
        if let Some((folders, _)) = file.path.rsplit_once('/') {
            doc.add_text(self.folders, folders);
        }
        let tags = &file.tags;
        for (field, text) in [
            (self.artist, &tags.artist),
            (self.album, &tags.album),
            (self.title, &tags.title),
            (self.genre, &tags.genre),
        ] {
            if let Some(text) = text {
                doc.add_text(field, text);
            }
        }
        if let Some(year) = tags.year {
            doc.add_u64(self.year, year.into());
            doc.add_text(self.year_word, year.to_string());
        }
        if let Some(duration) = tags.duration_s {
            doc.add_u64(self.duration, duration.into());
        }
        if let Some(bitrate) = tags.bitrate_kbps {
            doc.add_u64(self.bitrate, bitrate.into());
        }
        doc
    }

    /// The leaf and the record a stored document holds.
    pub fn record(&self, doc: &TantivyDocument) -> Result<(LeafKey, FileRecord), IndexError> {
        let corrupt = |field| IndexError::Corrupt { field };
        let leaf = doc
            .get_first(self.leaf)
            .and_then(|v| v.as_u64())
            .ok_or(corrupt("leaf"))?;
        let id: [u8; FileId::LEN] = doc
            .get_first(self.id)
            .and_then(|v| v.as_bytes())
            .and_then(|b| b.try_into().ok())
            .ok_or(corrupt("id"))?;
        let size = doc
            .get_first(self.size)
            .and_then(|v| v.as_u64())
            .ok_or(corrupt("size"))?;
        let path = doc
            .get_first(self.path)
            .and_then(|v| v.as_str())
            .ok_or(corrupt("path"))?
            .to_owned();
        let text = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let year = match doc.get_first(self.year).and_then(|v| v.as_u64()) {
            Some(y) => Some(u16::try_from(y).map_err(|_| corrupt("year"))?),
            None => None,
        };
        let small = |field, name| match doc.get_first(field).and_then(|v| v.as_u64()) {
            Some(n) => u32::try_from(n).map(Some).map_err(|_| corrupt(name)),
            None => Ok(None),
        };
        let duration_s = small(self.duration, "duration")?;
        let bitrate_kbps = small(self.bitrate, "bitrate")?;
        let tags = Tags {
            artist: text(self.artist),
            album: text(self.album),
            title: text(self.title),
            genre: text(self.genre),
            year,
            duration_s,
            bitrate_kbps,
        };
        let file = FileRecord {
            id: FileId(id),
            size,
            path,
            tags,
        };
        Ok((leaf, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_folds_case_and_accents_and_keeps_digits() {
        let mut a = analyzer();
        assert_eq!(
            words(&mut a, "01 - Beyoncé & MOTÖRHEAD_live.MP3"),
            ["01", "beyonce", "motorhead", "live", "mp3"]
        );
    }

    #[test]
    fn words_are_distinct_in_first_order() {
        let mut a = analyzer();
        assert_eq!(words(&mut a, "b A a B c"), ["b", "a", "c"]);
        assert!(words(&mut a, " -- ./!? ").is_empty());
    }

    #[test]
    fn document_round_trips_to_the_record() {
        let (_, fields) = Fields::schema();
        let file = FileRecord {
            id: FileId([9; 32]),
            size: 123,
            path: "share/Röyksopp/Melody A.M./03 - Eple.flac".into(),
            tags: Tags {
                artist: Some("Röyksopp".into()),
                album: None,
                title: Some(String::new()),
                genre: Some("Electronic".into()),
                year: Some(2001),
                duration_s: Some(220),
                bitrate_kbps: Some(320),
            },
        };
        let (leaf, record) = fields.record(&fields.document(42, &file)).unwrap();
        assert_eq!(leaf, 42);
        assert_eq!(record, file);
    }
}
