//! The catalog read model in the embedded store, with the indexes that make a product listing cost what its page
//! costs instead of what the catalog holds.
//!
//! Written in the transaction that writes the product document ([`index_product`], called by the commit):
//! - `catalog_sort`: for every live (not deleted) product, one key per sort (createdAt, price, lowercase title) in
//!   the all-products scope and one in its category's scope (the category in ASCII lowercase, as listings compare
//!   categories). A key is `scope | sort | value | id` in bytes that order like the values, so a page is a walk over
//!   a key range: forwards for an ascending sort, backwards for a descending one, ties ordered by id. Each entry
//!   holds the product's price, so a walk checks a price range without another read.
//! - `catalog_words`: `word | 0 | id` for every distinct word of the title and description, holding the price and
//!   category, so a search word's products are found and filtered without reading a document.
//! - `catalog_terms`: per live product, what a filtered listing checks and sorts it by (price, createdAt, lowercase
//!   title, words), so a product met in a sort index or a word's entries is checked with one lookup.
//! - the number of live products per scope, in `counters`.
//!
//! The MongoDB store has the same shape (`src/store/mongo/catalog.rs`): indexes `{deleted, categoryKey, createdKey,
//! id}`, `{deleted, categoryKey, price, id}`, `{deleted, categoryKey, titleKey, id}` and the same three without
//! `categoryKey`, plus a multikey index on a `words` array queried by prefix range for a search word of 3 or more
//! characters and by equality for a shorter one. How far a listing reads is bounded by the rules in
//! `store::listing` ([`crate::store::ListingBounds`]); the reads are in `listing`.

mod listing;

use std::ops::Bound;

use redb::{ReadOnlyTable, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{db_err, decode, COUNTERS, PRODUCTS};
use crate::domain::product::Product;
use crate::store::{product_words, ProductSort, SearchTerm, StoreError};

/// `scope | sort | value | id` -> price.
const SORT_KEYS: TableDefinition<&[u8], i64> = TableDefinition::new("catalog_sort");
/// `word | 0 | id` -> (price, category key).
const WORDS: TableDefinition<&[u8], (i64, &str)> = TableDefinition::new("catalog_words");
/// id -> (price, createdAt seconds, createdAt nanoseconds, lowercase title, words separated by spaces).
type TermsRow = (i64, i64, u32, &'static str, &'static str);
const TERMS: TableDefinition<&str, TermsRow> = TableDefinition::new("catalog_terms");

/// Raised whenever the index layout changes: a store written with another layout (or none) rebuilds on open.
const INDEX_VERSION: u64 = 3;
const INDEX_VERSION_KEY: &str = "catalog_index_version";
/// `catalog_live` counts every live product, `catalog_live:{category key}` those of one category.
const LIVE: &str = "catalog_live";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum SortKey {
    Created = b'c',
    Price = b'p',
    Title = b't',
}

impl SortKey {
    const ALL: [SortKey; 3] = [SortKey::Created, SortKey::Price, SortKey::Title];

    fn of(sort: ProductSort) -> Self {
        match sort {
            ProductSort::Newest | ProductSort::Oldest => Self::Created,
            ProductSort::PriceAsc | ProductSort::PriceDesc => Self::Price,
            ProductSort::TitleAsc | ProductSort::TitleDesc => Self::Title,
        }
    }
}

/// Categories are compared ignoring ASCII case, as [`ProductQuery::matches`] does.
fn category_key(category: &str) -> String {
    category.to_ascii_lowercase()
}

fn live_counter(category: Option<&str>) -> String {
    match category {
        None => LIVE.to_string(),
        Some(c) => format!("{LIVE}:{c}"),
    }
}

/// Appends `v` so that the bytes order like the numbers.
fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

/// Appends `s` so that the bytes order like the strings and the value ends unambiguously: a zero byte becomes
/// `0 0xff` and the string ends with `0 0`.
fn push_str(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn scope(category: Option<&str>) -> Vec<u8> {
    match category {
        None => vec![0],
        Some(c) => {
            let mut out = vec![1];
            push_str(&mut out, c);
            out
        }
    }
}

fn sort_prefix(scope: &[u8], sort: SortKey) -> Vec<u8> {
    let mut prefix = scope.to_vec();
    prefix.push(sort as u8);
    prefix
}

fn sort_key(scope: &[u8], sort: SortKey, p: &Product) -> Vec<u8> {
    let mut key = sort_prefix(scope, sort);
    match sort {
        SortKey::Created => {
            push_i64(&mut key, p.created_at.timestamp());
            key.extend_from_slice(&p.created_at.timestamp_subsec_nanos().to_be_bytes());
        }
        SortKey::Price => push_i64(&mut key, p.price),
        SortKey::Title => push_str(&mut key, &p.title.to_lowercase()),
    }
    key.extend_from_slice(p.id.as_bytes());
    key
}

/// The id at the end of a sort key whose value starts at `at`.
fn id_of_sort_key(key: &[u8], at: usize, sort: SortKey) -> Option<&[u8]> {
    match sort {
        SortKey::Created => key.get(at + 12..),
        SortKey::Price => key.get(at + 8..),
        SortKey::Title => {
            let mut i = at;
            loop {
                match (key.get(i)?, key.get(i + 1)?) {
                    (0, 0) => return key.get(i + 2..),
                    (0, _) => i += 2,
                    _ => i += 1,
                }
            }
        }
    }
}

fn id_of_word_key(key: &[u8]) -> Option<&[u8]> {
    key.iter().position(|&b| b == 0).map(|i| &key[i + 1..])
}

/// The smallest key above every key that starts with `prefix`, if there is one.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("malformed catalog index entry: {what}"))
}

/// What a listing checks and sorts a product by (a `catalog_terms` row).
#[derive(Debug, PartialEq)]
struct Terms {
    price: i64,
    created: (i64, u32),
    title: String,
    /// Distinct words, separated by spaces (a word is letters and digits only).
    words: String,
}

impl Terms {
    fn of(p: &Product) -> Self {
        Self {
            price: p.price,
            created: (p.created_at.timestamp(), p.created_at.timestamp_subsec_nanos()),
            title: p.title.to_lowercase(),
            words: product_words(p).into_iter().collect::<Vec<_>>().join(" "),
        }
    }

    fn read(table: &ReadOnlyTable<&'static str, TermsRow>, id: &[u8]) -> Result<Self, StoreError> {
        let found = Self::row(table, id)?;
        let (price, secs, nanos, title, words) = found.value();
        Ok(Self { price, created: (secs, nanos), title: title.to_string(), words: words.to_string() })
    }

    /// Whether the product is priced within `prices` and has, for every term, a word it matches, read in place.
    fn check(
        table: &ReadOnlyTable<&'static str, TermsRow>,
        id: &[u8],
        terms: &[SearchTerm],
        prices: Option<(i64, i64)>,
    ) -> Result<bool, StoreError> {
        let found = Self::row(table, id)?;
        let (price, _, _, _, words) = found.value();
        Ok(accepts(price, words, terms, prices))
    }

    fn row<'t>(
        table: &'t ReadOnlyTable<&'static str, TermsRow>,
        id: &[u8],
    ) -> Result<redb::AccessGuard<'t, TermsRow>, StoreError> {
        let id = std::str::from_utf8(id).map_err(|_| corrupt("id is not UTF-8"))?;
        table.get(id).map_err(db_err)?.ok_or_else(|| corrupt(&format!("no terms for product {id}")))
    }

    fn accepts(&self, terms: &[SearchTerm], prices: Option<(i64, i64)>) -> bool {
        accepts(self.price, &self.words, terms, prices)
    }
}

/// Whether a product of this price and these words (separated by spaces) is within `prices` and has, for every
/// term, a word it matches.
fn accepts(price: i64, words: &str, terms: &[SearchTerm], prices: Option<(i64, i64)>) -> bool {
    prices.is_none_or(|(min, max)| (min..=max).contains(&price))
        && terms.iter().all(|t| words.split(' ').any(|w| t.matches(w)))
}

/// What a live product contributes to the indexes.
#[derive(Debug, PartialEq)]
struct Entries {
    category: String,
    price: i64,
    sort_keys: Vec<Vec<u8>>,
    word_keys: Vec<Vec<u8>>,
    terms: Terms,
}

fn entries(p: &Product) -> Option<Entries> {
    if p.deleted {
        return None;
    }
    let category = category_key(&p.category);
    let scopes = [scope(None), scope(Some(&category))];
    let sort_keys = scopes.iter().flat_map(|s| SortKey::ALL.map(|k| sort_key(s, k, p))).collect();
    let word_keys = product_words(p)
        .into_iter()
        .map(|w| {
            let mut key = w.into_bytes();
            key.push(0);
            key.extend_from_slice(p.id.as_bytes());
            key
        })
        .collect();
    Some(Entries { category, price: p.price, sort_keys, word_keys, terms: Terms::of(p) })
}

struct Writer<'t> {
    sorts: Table<'t, &'static [u8], i64>,
    words: Table<'t, &'static [u8], (i64, &'static str)>,
    terms: Table<'t, &'static str, TermsRow>,
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            sorts: txn.open_table(SORT_KEYS).map_err(db_err)?,
            words: txn.open_table(WORDS).map_err(db_err)?,
            terms: txn.open_table(TERMS).map_err(db_err)?,
        })
    }

    fn insert(&mut self, id: &str, e: &Entries, counters: &mut Table<&'static str, u64>) -> Result<(), StoreError> {
        let t = &e.terms;
        self.terms
            .insert(id, (t.price, t.created.0, t.created.1, t.title.as_str(), t.words.as_str()))
            .map_err(db_err)?;
        for key in &e.sort_keys {
            self.sorts.insert(key.as_slice(), e.price).map_err(db_err)?;
        }
        for key in &e.word_keys {
            self.words.insert(key.as_slice(), (e.price, e.category.as_str())).map_err(db_err)?;
        }
        count(counters, &live_counter(None), true)?;
        count(counters, &live_counter(Some(&e.category)), true)
    }

    fn remove(&mut self, id: &str, e: &Entries, counters: &mut Table<&'static str, u64>) -> Result<(), StoreError> {
        self.terms.remove(id).map_err(db_err)?;
        for key in &e.sort_keys {
            self.sorts.remove(key.as_slice()).map_err(db_err)?;
        }
        for key in &e.word_keys {
            self.words.remove(key.as_slice()).map_err(db_err)?;
        }
        count(counters, &live_counter(None), false)?;
        count(counters, &live_counter(Some(&e.category)), false)
    }
}

fn count(counters: &mut Table<&'static str, u64>, key: &str, up: bool) -> Result<(), StoreError> {
    let n = counters.get(key).map_err(db_err)?.map_or(0, |v| v.value());
    let n = if up { n + 1 } else { n.saturating_sub(1) };
    if n == 0 {
        counters.remove(key).map_err(db_err)?;
    } else {
        counters.insert(key, n).map_err(db_err)?;
    }
    Ok(())
}

/// Brings the indexes in line with `product` before its document replaces the previous one (read in the same
/// transaction). A stock movement changes nothing the indexes hold, so it writes nothing to them.
pub(super) fn index_product(
    txn: &WriteTransaction,
    counters: &mut Table<&'static str, u64>,
    product: &Product,
) -> Result<(), StoreError> {
    let previous: Option<Product> = {
        let products = txn.open_table(PRODUCTS).map_err(db_err)?;
        let found = products.get(product.id.as_str()).map_err(db_err)?;
        found.map(|v| decode(v.value())).transpose()?
    };
    let (old, new) = (previous.as_ref().and_then(entries), entries(product));
    if old == new {
        return Ok(());
    }
    let mut writer = Writer::open(txn)?;
    if let Some(old) = old {
        writer.remove(&product.id, &old, counters)?;
    }
    if let Some(new) = new {
        writer.insert(&product.id, &new, counters)?;
    }
    Ok(())
}

/// Creates the catalog tables and builds the indexes when the store holds none of the current layout (a data
/// directory written before they existed).
pub(super) fn prepare(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let version = counters.get(INDEX_VERSION_KEY).map_err(db_err)?.map(|v| v.value());
    if version == Some(INDEX_VERSION) {
        Writer::open(txn)?;
        return Ok(());
    }
    txn.delete_table(SORT_KEYS).map_err(db_err)?;
    txn.delete_table(WORDS).map_err(db_err)?;
    txn.delete_table(TERMS).map_err(db_err)?;
    let live_counters = (Bound::Included(LIVE), Bound::Excluded("catalog_livf"));
    counters.retain_in::<&str, _>(live_counters, |_, _| false).map_err(db_err)?;
    let products: Vec<Product> = super::documents_in(txn, PRODUCTS)?;
    let mut writer = Writer::open(txn)?;
    for p in &products {
        if let Some(e) = entries(p) {
            writer.insert(&p.id, &e, &mut counters)?;
        }
    }
    counters.insert(INDEX_VERSION_KEY, INDEX_VERSION).map_err(db_err)?;
    tracing::info!(products = products.len(), "built the catalog indexes");
    Ok(())
}
