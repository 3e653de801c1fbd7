//! The catalog read model in the embedded store, with the indexes that make a product listing cost what its page
//! costs instead of what the catalog holds.
//!
//! Written in the transaction that writes the product document ([`index_product`], called by the commit):
//! - `catalog_sort`: for every live (not deleted) product, one key per sort (createdAt, price, lowercase title) in
//!   the all-products scope and one in its category's scope (the category in ASCII lowercase, as listings compare
//!   categories). A key is `scope | sort | value | id` in bytes that order like the values, so a page is a walk over
//!   a key range: forwards for an ascending sort, backwards for a descending one, ties ordered by id.
//! - `catalog_words`: `word | 0 | id` for every distinct word of the title and description, holding the price and
//!   category, so a text query is filtered and counted without reading a document.
//! - the number of live products per scope, in `counters`.
//!
//! The MongoDB store has the same shape (`src/store/mongo/catalog.rs`): indexes `{deleted, categoryKey, createdKey,
//! id}`, `{deleted, categoryKey, price, id}`, `{deleted, categoryKey, titleKey, id}` and the same three without
//! `categoryKey`, plus a multikey index on a `words` array queried by prefix range.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::ops::Bound;

use async_trait::async_trait;
use redb::{Database, ReadOnlyTable, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{db_err, decode, read_doc, EmbeddedStore, COUNTERS, PRODUCTS};
use crate::domain::product::Product;
use crate::store::{product_words, search_words, CatalogStore, Page, ProductQuery, ProductSort, StoreError};

const SORT_KEYS: TableDefinition<&[u8], ()> = TableDefinition::new("catalog_sort");
/// `word | 0 | id` -> (price, category key).
const WORDS: TableDefinition<&[u8], (i64, &str)> = TableDefinition::new("catalog_words");

/// Raised whenever the index layout changes: a store written with another layout (or none) rebuilds on open.
const INDEX_VERSION: u64 = 1;
const INDEX_VERSION_KEY: &str = "catalog_index_version";
/// `catalog_live` counts every live product, `catalog_live:{category key}` those of one category.
const LIVE: &str = "catalog_live";

/// Reading and decoding one product document costs about as much as walking this many index entries (about 2 µs
/// against 0.1 µs in `cargo bench --bench catalog`).
const DOCUMENT_COST: usize = 20;

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

/// What a live product contributes to the indexes.
#[derive(Debug, PartialEq)]
struct Entries {
    category: String,
    price: i64,
    sort_keys: Vec<Vec<u8>>,
    word_keys: Vec<Vec<u8>>,
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
    Some(Entries { category, price: p.price, sort_keys, word_keys })
}

struct Writer<'t> {
    sorts: Table<'t, &'static [u8], ()>,
    words: Table<'t, &'static [u8], (i64, &'static str)>,
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self { sorts: txn.open_table(SORT_KEYS).map_err(db_err)?, words: txn.open_table(WORDS).map_err(db_err)? })
    }

    fn insert(&mut self, e: &Entries, counters: &mut Table<&'static str, u64>) -> Result<(), StoreError> {
        for key in &e.sort_keys {
            self.sorts.insert(key.as_slice(), ()).map_err(db_err)?;
        }
        for key in &e.word_keys {
            self.words.insert(key.as_slice(), (e.price, e.category.as_str())).map_err(db_err)?;
        }
        count(counters, &live_counter(None), true)?;
        count(counters, &live_counter(Some(&e.category)), true)
    }

    fn remove(&mut self, e: &Entries, counters: &mut Table<&'static str, u64>) -> Result<(), StoreError> {
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
        writer.remove(&old, counters)?;
    }
    if let Some(new) = new {
        writer.insert(&new, counters)?;
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
    let live_counters = (Bound::Included(LIVE), Bound::Excluded("catalog_livf"));
    counters.retain_in::<&str, _>(live_counters, |_, _| false).map_err(db_err)?;
    let products: Vec<Product> = {
        let table = txn.open_table(PRODUCTS).map_err(db_err)?;
        let mut all = Vec::new();
        for row in table.iter().map_err(db_err)? {
            all.push(decode(row.map_err(db_err)?.1.value())?);
        }
        all
    };
    let mut writer = Writer::open(txn)?;
    for e in products.iter().filter_map(entries) {
        writer.insert(&e, &mut counters)?;
    }
    counters.insert(INDEX_VERSION_KEY, INDEX_VERSION).map_err(db_err)?;
    tracing::info!(products = products.len(), "built the catalog indexes");
    Ok(())
}

/// What a listing read, to tell a query's cost apart from the catalog's size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Work {
    pub index_entries: usize,
    pub documents: usize,
}

/// How a filtered listing (text or price range) picks its page out of the matching ids: by walking the scope's
/// index of the requested sort, keeping matches, until the page is full; or by reading every match and sorting
/// them. Tests pin each way to check both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Whichever should read less.
    Cheapest,
    #[cfg(test)]
    Walk,
    #[cfg(test)]
    Sort,
}

/// The keys of one sort index of one scope (for the price index, possibly only a price range), and the direction
/// to walk them in.
struct SortRange {
    sort: SortKey,
    descending: bool,
    /// Where the sort value starts in a key.
    value_at: usize,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
}

impl SortRange {
    fn new(scope: &[u8], sort: SortKey, descending: bool, prices: Option<(i64, i64)>) -> Self {
        let prefix = sort_prefix(scope, sort);
        let (mut lo, mut hi) = (prefix.clone(), successor(&prefix));
        if let (SortKey::Price, Some((min, max))) = (sort, prices) {
            push_i64(&mut lo, min);
            let mut top = prefix.clone();
            push_i64(&mut top, max);
            hi = successor(&top);
        }
        Self { sort, descending, value_at: prefix.len(), lo, hi }
    }
}

struct Reader {
    sorts: ReadOnlyTable<&'static [u8], ()>,
    words: ReadOnlyTable<&'static [u8], (i64, &'static str)>,
    products: ReadOnlyTable<&'static str, &'static [u8]>,
    work: Work,
}

impl Reader {
    fn load(&mut self, id: &[u8]) -> Result<Product, StoreError> {
        let id = std::str::from_utf8(id).map_err(|_| corrupt("id is not UTF-8"))?;
        self.work.documents += 1;
        let found = self.products.get(id).map_err(db_err)?;
        let bytes = found.ok_or_else(|| corrupt(&format!("product {id} is indexed but missing")))?;
        decode(bytes.value())
    }

    fn load_all<'a>(&mut self, ids: impl IntoIterator<Item = &'a Vec<u8>>) -> Result<Vec<Product>, StoreError> {
        ids.into_iter().map(|id| self.load(id)).collect()
    }

    /// Walks `range` in listing order, keeping the ids `keep` accepts. Returns the kept ids at
    /// `offset..offset + limit` and, if `count_all`, how many were kept in all (otherwise the walk stops at the end
    /// of the page).
    fn walk(
        &mut self,
        range: &SortRange,
        (offset, limit): (usize, usize),
        count_all: bool,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<(Vec<Vec<u8>>, usize), StoreError> {
        let bounds =
            (Bound::Included(range.lo.as_slice()), range.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
        let rows = self.sorts.range::<&[u8]>(bounds).map_err(db_err)?;
        let rows: Box<dyn Iterator<Item = _>> = if range.descending { Box::new(rows.rev()) } else { Box::new(rows) };
        let (mut page, mut kept) = (Vec::new(), 0);
        for row in rows {
            if !count_all && page.len() == limit {
                break;
            }
            let (key, _) = row.map_err(db_err)?;
            self.work.index_entries += 1;
            let key = key.value();
            let id = id_of_sort_key(key, range.value_at, range.sort).ok_or_else(|| corrupt("sort key"))?;
            if !keep(id) {
                continue;
            }
            if kept >= offset && page.len() < limit {
                page.push(id.to_vec());
            }
            kept += 1;
        }
        Ok((page, kept))
    }

    /// The ids of the scope's live products priced within `min..=max`.
    fn priced_within(&mut self, scope: &[u8], (min, max): (i64, i64)) -> Result<HashSet<Vec<u8>>, StoreError> {
        let mut ids = HashSet::new();
        let range = SortRange::new(scope, SortKey::Price, false, Some((min, max)));
        self.walk(&range, (0, 0), true, |id| {
            ids.insert(id.to_vec());
            true
        })?;
        Ok(ids)
    }

    /// The ids of the live products with, for every word, a word that starts with it, in the category (if any) and
    /// priced within `min..=max`.
    fn with_words(
        &mut self,
        words: &[String],
        category: Option<&str>,
        (min, max): (i64, i64),
    ) -> Result<HashSet<Vec<u8>>, StoreError> {
        // Longer words tend to match fewer products, and each word only narrows what the previous ones found.
        let mut words = words.to_vec();
        words.sort_by(|a, b| (Reverse(a.len()), a).cmp(&(Reverse(b.len()), b)));
        words.dedup();
        let mut found: Option<HashSet<Vec<u8>>> = None;
        for word in &words {
            let hi = successor(word.as_bytes());
            let bounds = (Bound::Included(word.as_bytes()), hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
            let mut hits = HashSet::new();
            for row in self.words.range::<&[u8]>(bounds).map_err(db_err)? {
                let (key, value) = row.map_err(db_err)?;
                self.work.index_entries += 1;
                let (price, product_category) = value.value();
                let key = key.value();
                let id = id_of_word_key(key).ok_or_else(|| corrupt("word key"))?;
                if category.is_some_and(|c| c != product_category) || price < min || price > max {
                    continue;
                }
                if found.as_ref().is_none_or(|f| f.contains(id)) {
                    hits.insert(id.to_vec());
                }
            }
            if hits.is_empty() {
                return Ok(hits);
            }
            found = Some(hits);
        }
        Ok(found.unwrap_or_default())
    }
}

/// One page of the listing, and what it took to read it.
///
/// - No text and no price range: the page is walked off the sort index; the total is the scope's counter.
/// - Price range, sorted by price: the page is walked off the price range, which is counted for the total.
/// - Otherwise the matching ids are found in the word index or the price range (index entries only), and the page is
///   either walked off the sort index keeping matches, or cut from all matches read and sorted, whichever reads less.
fn list(db: &Database, q: &ProductQuery, plan: Plan) -> Result<(Page<Product>, Work), StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut reader = Reader {
        sorts: txn.open_table(SORT_KEYS).map_err(db_err)?,
        words: txn.open_table(WORDS).map_err(db_err)?,
        products: txn.open_table(PRODUCTS).map_err(db_err)?,
        work: Work::default(),
    };
    let category = q.category.as_deref().map(category_key);
    let scope = scope(category.as_deref());
    let in_scope = {
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let found = counters.get(live_counter(category.as_deref()).as_str()).map_err(db_err)?;
        found.map_or(0, |v| v.value()) as usize
    };
    let words = q.text.as_deref().map(search_words).unwrap_or_default();
    let prices = (q.min_price.is_some() || q.max_price.is_some())
        .then(|| (q.min_price.unwrap_or(i64::MIN), q.max_price.unwrap_or(i64::MAX)));
    let window = ((q.page.saturating_sub(1) as usize).saturating_mul(q.limit as usize), q.limit as usize);
    let (sort, descending) = (SortKey::of(q.sort), q.sort.descending());
    if prices.is_some_and(|(min, max)| min > max) {
        return Ok((Page { items: Vec::new(), page: q.page, limit: q.limit, total: 0 }, reader.work));
    }

    let (items, total) = if words.is_empty() && prices.is_none() {
        let (ids, _) = reader.walk(&SortRange::new(&scope, sort, descending, None), window, false, |_| true)?;
        (reader.load_all(&ids)?, in_scope)
    } else if words.is_empty() && sort == SortKey::Price {
        let (ids, total) = reader.walk(&SortRange::new(&scope, sort, descending, prices), window, true, |_| true)?;
        (reader.load_all(&ids)?, total)
    } else {
        let matches = match (words.is_empty(), prices) {
            (true, Some(range)) => reader.priced_within(&scope, range)?,
            _ => reader.with_words(&words, category.as_deref(), prices.unwrap_or((i64::MIN, i64::MAX)))?,
        };
        let total = matches.len();
        let (offset, limit) = window;
        if offset >= total {
            (Vec::new(), total)
        } else {
            // Matches spread evenly over the scope are met about every `in_scope / total` entries.
            let walked = in_scope.saturating_mul((offset + limit).min(total)) / total;
            let walk = match plan {
                Plan::Cheapest => walked <= total.saturating_mul(DOCUMENT_COST),
                #[cfg(test)]
                Plan::Walk => true,
                #[cfg(test)]
                Plan::Sort => false,
            };
            if walk {
                let range = SortRange::new(&scope, sort, descending, None);
                let (ids, _) = reader.walk(&range, window, false, |id| matches.contains(id))?;
                (reader.load_all(&ids)?, total)
            } else {
                let mut hits = reader.load_all(matches.iter())?;
                hits.sort_by(|a, b| q.compare(a, b));
                (hits.into_iter().skip(offset).take(limit).collect(), total)
            }
        }
    };
    Ok((Page { items, page: q.page, limit: q.limit, total: total as u64 }, reader.work))
}

#[async_trait]
impl CatalogStore for EmbeddedStore {
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, PRODUCTS, &id)).await
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        let query = query.clone();
        self.run(move |db| {
            let (page, work) = list(db, &query, Plan::Cheapest)?;
            tracing::debug!(index_entries = work.index_entries, documents = work.documents, "product listing");
            Ok(page)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};
    use proptest::prelude::*;

    use super::super::{commit_blocking, read_all, EmbeddedStore};
    use super::*;
    use crate::store::{Commit, ReadModel};

    fn product(id: &str, title: &str, description: &str, price: i64, category: &str, created: i64) -> Product {
        let created_at = DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(created);
        Product {
            id: id.into(),
            title: title.into(),
            description: description.into(),
            price,
            currency: "USD".into(),
            category: category.into(),
            image_url: None,
            stock_on_hand: 5,
            stock_reserved: 0,
            version: 1,
            deleted: false,
            created_at,
            updated_at: created_at,
        }
    }

    /// Writes the product document the way a product actor's commit does.
    fn commit(db: &Database, p: &Product) {
        let commit = Commit {
            stream: format!("product:{}", p.id),
            expected_seq: 0,
            events: Vec::new(),
            snapshot: None,
            read_model: Some(ReadModel::Product(p.clone())),
            active: false,
        };
        commit_blocking(db, commit).unwrap();
    }

    /// The same writes for a large catalog in one transaction, so a test does not wait for 10,000 disk syncs.
    fn commit_all(db: &Database, products: &[Product]) {
        let txn = db.begin_write().unwrap();
        {
            let mut counters = txn.open_table(COUNTERS).unwrap();
            for p in products {
                index_product(&txn, &mut counters, p).unwrap();
                let bytes = serde_json::to_vec(p).unwrap();
                txn.open_table(PRODUCTS).unwrap().insert(p.id.as_str(), bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn ids(page: &Page<Product>) -> Vec<&str> {
        page.items.iter().map(|p| p.id.as_str()).collect()
    }

    /// The listing, checked against the reference rules applied to every stored product.
    fn listed(db: &Database, q: &ProductQuery, plan: Plan) -> (Page<Product>, Work) {
        let (page, work) = list(db, q, plan).unwrap();
        let expected = q.paginate(read_all::<Product>(db, PRODUCTS).unwrap().into_iter());
        assert_eq!((ids(&page), page.total), (ids(&expected), expected.total), "{q:?} planned {plan:?}");
        (page, work)
    }

    fn any_product() -> impl Strategy<Value = Product> {
        let titles =
            ["Red mug", "red MUG", "Blue mug", "Desk lamp", "Teapot", "Äpfel Öl", "a\u{0}b", "a", "mug-2000", ""];
        let descriptions = ["", "A red mug", "steel kettle 1.7 l", "mugs and more", "ÄPFEL"];
        let categories = ["kitchen", "Kitchen", "office", "ÄB", "äb"];
        let prices = prop_oneof![-3i64..4, Just(i64::MIN), Just(i64::MAX)];
        (0..12usize, 0..titles.len(), 0..descriptions.len(), prices, 0..categories.len(), -2i64..3, any::<bool>())
            .prop_map(move |(id, t, d, price, c, created, deleted)| Product {
                deleted: deleted && id % 3 == 0,
                stock_on_hand: created.abs(),
                ..product(&format!("p{id}"), titles[t], descriptions[d], price, categories[c], created)
            })
    }

    fn any_query() -> impl Strategy<Value = ProductQuery> {
        let texts = ["mug", "MU", "red mug", "m", "ke", "2000", "!!", "lamp desk", "äp", "öl", "zzz", "a b"];
        let categories = ["kitchen", "KITCHEN", "office", "äb", "ÄB", "none"];
        let sorts = [
            ProductSort::Newest,
            ProductSort::Oldest,
            ProductSort::PriceAsc,
            ProductSort::PriceDesc,
            ProductSort::TitleAsc,
            ProductSort::TitleDesc,
        ];
        (
            (1u32..4, 1u32..5),
            proptest::option::of(proptest::sample::select(texts.to_vec())),
            proptest::option::of(proptest::sample::select(categories.to_vec())),
            (proptest::option::of(-4i64..5), proptest::option::of(-4i64..5)),
            proptest::sample::select(sorts.to_vec()),
        )
            .prop_map(|((page, limit), text, category, (min_price, max_price), sort)| ProductQuery {
                page,
                limit,
                text: text.map(String::from),
                category: category.map(String::from),
                min_price,
                max_price,
                sort,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever was written, rewritten and deleted, every way of reading a page gives exactly the page the
        /// reference rules cut from the whole catalog.
        #[test]
        fn indexed_listing_equals_the_reference(
            writes in proptest::collection::vec(any_product(), 0..20),
            queries in proptest::collection::vec(any_query(), 1..12),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            for p in &writes {
                commit(&store.db, p);
            }
            for q in &queries {
                for plan in [Plan::Cheapest, Plan::Walk, Plan::Sort] {
                    listed(&store.db, q, plan);
                }
            }
        }
    }

    #[test]
    fn a_data_directory_written_without_indexes_is_indexed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            commit(&store.db, &product("a", "Red mug", "", 900, "Kitchen", 1));
            commit(&store.db, &product("b", "Desk lamp", "brass", 4500, "office", 2));
            commit(&store.db, &Product { deleted: true, ..product("c", "Old mug", "", 100, "kitchen", 3) });
        }
        {
            // What a store looked like before the catalog indexes existed.
            let db = Database::create(dir.path().join("commercex.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(SORT_KEYS).unwrap();
            txn.delete_table(WORDS).unwrap();
            let mut counters = txn.open_table(COUNTERS).unwrap();
            for key in [INDEX_VERSION_KEY, LIVE, "catalog_live:kitchen", "catalog_live:office"] {
                counters.remove(key).unwrap();
            }
            drop(counters);
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let all = listed(&store.db, &ProductQuery { page: 1, limit: 10, ..Default::default() }, Plan::Cheapest).0;
        assert_eq!((ids(&all), all.total), (vec!["b", "a"], 2));
        let q = ProductQuery {
            page: 1,
            limit: 10,
            text: Some("mu".into()),
            category: Some("KITCHEN".into()),
            ..Default::default()
        };
        assert_eq!(ids(&listed(&store.db, &q, Plan::Cheapest).0), ["a"]);
        // Writes after the rebuild keep the rebuilt indexes and counts right.
        commit(&store.db, &Product { deleted: true, ..product("a", "Red mug", "", 900, "Kitchen", 1) });
        let q = ProductQuery { page: 1, limit: 10, category: Some("kitchen".into()), ..Default::default() };
        assert_eq!(listed(&store.db, &q, Plan::Cheapest).0.total, 0);
    }

    #[test]
    fn a_page_of_a_large_catalog_reads_what_the_page_needs() {
        const WORDS_USED: [&str; 8] = ["red", "blue", "steel", "oak", "mug", "lamp", "desk", "kettle"];
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let products: Vec<Product> = (0..10_000i64)
            .map(|i| {
                let idx = i as usize;
                let title = format!("{} {} {i}", WORDS_USED[idx % 8], WORDS_USED[idx / 8 % 8]);
                let description = if i % 500 == 0 { "limited edition" } else { "everyday item" };
                let price = 100 + i * 7919 % 100_000;
                let p = product(&format!("{i:05}"), &title, description, price, &format!("cat{}", i % 20), i * 1000);
                Product { deleted: i % 100 == 1, ..p }
            })
            .collect();
        commit_all(&store.db, &products);
        let live = products.iter().filter(|p| !p.deleted).count();
        let query = |f: fn(&mut ProductQuery)| {
            let mut q = ProductQuery { page: 1, limit: 20, ..Default::default() };
            f(&mut q);
            q
        };

        let (first, work) = listed(&store.db, &query(|_| {}), Plan::Cheapest);
        assert_eq!((first.items.len(), first.total as usize), (20, live));
        assert_eq!(work, Work { index_entries: 20, documents: 20 });

        let (category, work) = listed(&store.db, &query(|q| q.category = Some("CAT3".into())), Plan::Cheapest);
        assert_eq!(category.items.len(), 20);
        assert_eq!(work, Work { index_entries: 20, documents: 20 });

        let deep = query(|q| q.page = 300);
        assert_eq!(listed(&store.db, &deep, Plan::Cheapest).1, Work { index_entries: 6_000, documents: 20 });

        let priced = query(|q| {
            (q.min_price, q.max_price, q.sort, q.page) = (Some(1_000), Some(5_000), ProductSort::PriceAsc, 2)
        });
        let (page, work) = listed(&store.db, &priced, Plan::Cheapest);
        assert!(page.total > 300 && page.total < 500, "{}", page.total);
        assert_eq!(work, Work { index_entries: page.total as usize, documents: 20 });

        // A wide price range sorted otherwise: walking the newest-first index finds the page quickly.
        let wide = query(|q| (q.min_price, q.max_price) = (Some(10_000), None));
        let (page, work) = listed(&store.db, &wide, Plan::Cheapest);
        assert!(page.total > 8_000);
        assert_eq!(work.documents, 20);
        assert!(work.index_entries < page.total as usize + 100, "{work:?}");

        // A rare word: its few matches are read and sorted.
        let (rare, work) = listed(&store.db, &query(|q| q.text = Some("LIMIT".into())), Plan::Cheapest);
        assert_eq!(rare.total, 20);
        assert_eq!(work, Work { index_entries: 20, documents: 20 });

        // Common words: only the page is read.
        let (common, work) = listed(&store.db, &query(|q| q.text = Some("ITEM st".into())), Plan::Cheapest);
        assert!(common.total > 1_000);
        assert_eq!(work.documents, 20);
    }
}
