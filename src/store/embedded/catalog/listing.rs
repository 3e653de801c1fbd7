//! Product listings read off the catalog indexes, each reading a bounded number of entries (see
//! [`ProductQuery::paginate_within`] for the rules and [`list`] for how each shape is read).

use std::collections::BTreeSet;
use std::ops::Bound;

use async_trait::async_trait;
use redb::{Database, ReadOnlyTable};

use super::super::{db_err, decode, read_doc, EmbeddedStore, COUNTERS, PRODUCTS};
use super::{
    accepts, category_key, corrupt, id_of_sort_key, id_of_word_key, live_counter, push_i64, scope, sort_prefix,
    successor, SortKey, Terms, TermsRow, SORT_KEYS, TERMS, WORDS,
};
use crate::domain::product::Product;
use crate::store::{CatalogStore, ListingBounds, Page, ProductQuery, SearchTerm, StoreError};

/// What a listing read, to tell a query's cost apart from the catalog's size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Work {
    /// Entries of the sort, word and terms indexes read (a terms lookup counts as one).
    pub index_entries: usize,
    pub documents: usize,
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

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (Bound::Included(self.lo.as_slice()), self.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded))
    }
}

/// The keys of a search term's entries in the word index: the word and every longer word it begins, or the word
/// alone.
fn word_bounds(term: &SearchTerm) -> (Vec<u8>, Option<Vec<u8>>) {
    let word = term.word.as_bytes();
    if term.prefix {
        (word.to_vec(), successor(word))
    } else {
        ([word, &[0]].concat(), Some([word, &[1]].concat()))
    }
}

/// Where a walk over a sort range stops.
struct Stop {
    /// After keeping this many ids.
    kept: usize,
    /// After reading this many entries.
    entries: usize,
}

/// What a walk over a sort range found.
struct Walked {
    /// The kept ids at the page's positions.
    page: Vec<Vec<u8>>,
    kept: usize,
    /// Whether the walk reached the end of the range.
    ended: bool,
    /// Entries read, including one read past the entry cap to learn whether the range went on.
    entries: usize,
}

/// Walks `range` in listing order, keeping the ids `keep` accepts (given the id and the price the entry holds),
/// until the range ends or `stop` says.
fn walk(
    sorts: &ReadOnlyTable<&'static [u8], i64>,
    range: &SortRange,
    (offset, limit): (usize, usize),
    stop: Stop,
    mut keep: impl FnMut(&[u8], i64) -> Result<bool, StoreError>,
) -> Result<Walked, StoreError> {
    let rows = sorts.range::<&[u8]>(range.bounds()).map_err(db_err)?;
    let mut rows: Box<dyn Iterator<Item = _>> = if range.descending { Box::new(rows.rev()) } else { Box::new(rows) };
    let mut walked = Walked { page: Vec::new(), kept: 0, ended: false, entries: 0 };
    loop {
        if walked.kept == stop.kept {
            return Ok(walked);
        }
        let Some(row) = rows.next() else {
            walked.ended = true;
            return Ok(walked);
        };
        walked.entries += 1;
        if walked.entries > stop.entries {
            return Ok(walked);
        }
        let (key, price) = row.map_err(db_err)?;
        let key = key.value();
        let id = id_of_sort_key(key, range.value_at, range.sort).ok_or_else(|| corrupt("sort key"))?;
        if keep(id, price.value())? {
            if walked.kept >= offset && walked.page.len() < limit {
                walked.page.push(id.to_vec());
            }
            walked.kept += 1;
        }
    }
}

type Rows<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, bool), StoreError>> + 'a>;

/// The entries of one filter (a search term's, or the price range's), read in step with the others' to find a narrow
/// one: each entry's id and whether it passes the listing's other cheap checks (category and price).
struct Feed<'a> {
    rows: Rows<'a>,
    read: usize,
    ids: Vec<Vec<u8>>,
}

struct Reader {
    sorts: ReadOnlyTable<&'static [u8], i64>,
    words: ReadOnlyTable<&'static [u8], (i64, &'static str)>,
    terms: ReadOnlyTable<&'static str, TermsRow>,
    products: ReadOnlyTable<&'static str, &'static [u8]>,
    work: Work,
}

/// The query as the indexes read it.
struct Plan<'q> {
    q: &'q ProductQuery,
    bounds: ListingBounds,
    category: Option<String>,
    scope: Vec<u8>,
    in_scope: usize,
    terms: Vec<SearchTerm>,
    prices: Option<(i64, i64)>,
    window: (usize, usize),
    sort: SortKey,
}

impl Reader {
    fn load_all(&mut self, ids: &[Vec<u8>]) -> Result<Vec<Product>, StoreError> {
        let mut loaded = Vec::with_capacity(ids.len());
        for id in ids {
            let id = std::str::from_utf8(id).map_err(|_| corrupt("id is not UTF-8"))?;
            self.work.documents += 1;
            let found = self.products.get(id).map_err(db_err)?;
            let bytes = found.ok_or_else(|| corrupt(&format!("product {id} is indexed but missing")))?;
            loaded.push(decode(bytes.value())?);
        }
        Ok(loaded)
    }

    /// No text and no price range: the page off the sort index, the total from the scope's counter.
    fn unfiltered(&mut self, plan: &Plan) -> Result<(Vec<Vec<u8>>, usize, bool), StoreError> {
        let (offset, limit) = plan.window;
        if offset >= plan.in_scope {
            return Ok((Vec::new(), plan.in_scope, true));
        }
        let range = SortRange::new(&plan.scope, plan.sort, plan.q.sort.descending(), None);
        let walked =
            walk(&self.sorts, &range, plan.window, Stop { kept: offset + limit, entries: usize::MAX }, |_, _| {
                Ok(true)
            })?;
        self.work.index_entries += walked.entries;
        Ok((walked.page, plan.in_scope, true))
    }

    /// A price range sorted by price: the page off the range, counted on to `max(narrow, offset + limit)` and one
    /// more.
    fn price_sorted(&mut self, plan: &Plan) -> Result<(Vec<Vec<u8>>, usize, bool), StoreError> {
        let (offset, limit) = plan.window;
        let range = SortRange::new(&plan.scope, plan.sort, plan.q.sort.descending(), plan.prices);
        let counted = plan.bounds.narrow.max(offset + limit);
        let walked = walk(
            &self.sorts,
            &range,
            plan.window,
            Stop { kept: counted.saturating_add(1), entries: usize::MAX },
            |_, _| Ok(true),
        )?;
        self.work.index_entries += walked.entries;
        Ok((walked.page, walked.kept, walked.ended))
    }

    /// The candidates of the query's narrowest filter, if one is narrow: reads every filter's entries in step and
    /// stops at the first filter to end within `narrow` entries, or once each has more. So it reads at most
    /// `filters x (narrow + 1)` entries, and `filters x` the narrow one's entries when there is one.
    fn narrow_candidates(&mut self, plan: &Plan) -> Result<Option<BTreeSet<Vec<u8>>>, StoreError> {
        let mut feeds: Vec<Feed> = Vec::new();
        let (category, prices) = (plan.category.as_deref(), plan.prices);
        for term in &plan.terms {
            let (lo, hi) = word_bounds(term);
            let bounds = (Bound::Included(lo.as_slice()), hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
            let rows = self.words.range::<&[u8]>(bounds).map_err(db_err)?.map(move |row| {
                let (key, value) = row.map_err(db_err)?;
                let (price, product_category) = value.value();
                let id = id_of_word_key(key.value()).ok_or_else(|| corrupt("word key"))?.to_vec();
                let passes = category.is_none_or(|c| c == product_category)
                    && prices.is_none_or(|(min, max)| (min..=max).contains(&price));
                Ok((id, passes))
            });
            feeds.push(Feed { rows: Box::new(rows), read: 0, ids: Vec::new() });
        }
        if let Some(range) = prices.map(|p| SortRange::new(&plan.scope, SortKey::Price, false, Some(p))) {
            let rows = self.sorts.range::<&[u8]>(range.bounds()).map_err(db_err)?.map(move |row| {
                let (key, _) = row.map_err(db_err)?;
                let id =
                    id_of_sort_key(key.value(), range.value_at, SortKey::Price).ok_or_else(|| corrupt("sort key"))?;
                Ok((id.to_vec(), true))
            });
            feeds.push(Feed { rows: Box::new(rows), read: 0, ids: Vec::new() });
        }
        while feeds.iter().any(|f| f.read <= plan.bounds.narrow) {
            for feed in feeds.iter_mut().filter(|f| f.read <= plan.bounds.narrow) {
                let Some(row) = feed.rows.next() else {
                    return Ok(Some(std::mem::take(&mut feed.ids).into_iter().collect()));
                };
                self.work.index_entries += 1;
                feed.read += 1;
                let (id, passes) = row?;
                if passes {
                    feed.ids.push(id);
                }
            }
        }
        Ok(None)
    }

    /// A filtered listing with a narrow filter: its candidates checked and sorted, every match counted.
    fn narrow(
        &mut self,
        plan: &Plan,
        candidates: BTreeSet<Vec<u8>>,
    ) -> Result<(Vec<Vec<u8>>, usize, bool), StoreError> {
        let mut hits = Vec::new();
        for id in candidates {
            self.work.index_entries += 1;
            let terms = Terms::read(&self.terms, &id)?;
            if terms.accepts(&plan.terms, plan.prices) {
                hits.push((id, terms));
            }
        }
        hits.sort_by(|(a, ta), (b, tb)| {
            let ascending = match plan.sort {
                SortKey::Created => ta.created.cmp(&tb.created),
                SortKey::Price => ta.price.cmp(&tb.price),
                SortKey::Title => ta.title.cmp(&tb.title),
            }
            .then_with(|| a.cmp(b));
            if plan.q.sort.descending() {
                ascending.reverse()
            } else {
                ascending
            }
        });
        let (offset, limit) = plan.window;
        let total = hits.len();
        Ok((hits.into_iter().skip(offset).take(limit).map(|(id, _)| id).collect(), total, true))
    }

    /// A filtered listing whose filters are all broad: the matches among the first `window` products in listing
    /// order, counted; exact only if the window held the whole range. A price range alone is checked on the sort
    /// entries' prices; search terms take a terms lookup per product.
    fn broad(&mut self, plan: &Plan) -> Result<(Vec<Vec<u8>>, usize, bool), StoreError> {
        let prices = if plan.sort == SortKey::Price { plan.prices } else { None };
        let range = SortRange::new(&plan.scope, plan.sort, plan.q.sort.descending(), prices);
        let mut lookups = 0;
        let stop = Stop { kept: usize::MAX, entries: plan.bounds.window };
        let walked = walk(&self.sorts, &range, plan.window, stop, |id, price| {
            if plan.terms.is_empty() {
                return Ok(accepts(price, "", &[], plan.prices));
            }
            lookups += 1;
            Terms::check(&self.terms, id, &plan.terms, plan.prices)
        })?;
        self.work.index_entries += walked.entries + lookups;
        Ok((walked.page, walked.kept, walked.ended))
    }
}

/// One page of the listing by the rules of [`ProductQuery::paginate_within`], and what it took to read it.
///
/// - No text and no price range: the page is walked off the sort index; the total is the scope's counter, and a
///   page past it reads nothing.
/// - A price range sorted by price: the page is walked off the price range, counted on for the total up to a bound.
/// - Otherwise the filters' index entries are read in step until one filter proves narrow (its candidates are
///   checked against the terms index and sorted) or all broad (the first `window` products of the sort index are
///   checked and the page cut from those that match).
fn list(db: &Database, q: &ProductQuery, bounds: ListingBounds) -> Result<(Page<Product>, Work), StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut reader = Reader {
        sorts: txn.open_table(SORT_KEYS).map_err(db_err)?,
        words: txn.open_table(WORDS).map_err(db_err)?,
        terms: txn.open_table(TERMS).map_err(db_err)?,
        products: txn.open_table(PRODUCTS).map_err(db_err)?,
        work: Work::default(),
    };
    let category = q.category.as_deref().map(category_key);
    let in_scope = {
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let found = counters.get(live_counter(category.as_deref()).as_str()).map_err(db_err)?;
        found.map_or(0, |v| v.value()) as usize
    };
    let plan = Plan {
        q,
        bounds,
        scope: scope(category.as_deref()),
        category,
        in_scope,
        terms: q.terms(),
        prices: q.price_range(),
        window: q.window(),
        sort: SortKey::of(q.sort),
    };
    let (ids, total, total_is_exact) = if plan.prices.is_some_and(|(min, max)| min > max) {
        (Vec::new(), 0, true)
    } else if plan.terms.is_empty() && plan.prices.is_none() {
        reader.unfiltered(&plan)?
    } else if plan.terms.is_empty() && q.sort.by_price() {
        reader.price_sorted(&plan)?
    } else {
        match reader.narrow_candidates(&plan)? {
            Some(candidates) => reader.narrow(&plan, candidates)?,
            None => reader.broad(&plan)?,
        }
    };
    let items = reader.load_all(&ids)?;
    let page = Page { items, page: q.page, limit: q.limit, total: total as u64, total_is_exact };
    Ok((page, reader.work))
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
            let (page, work) = list(db, &query, ListingBounds::DEFAULT)?;
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

    use super::super::super::{commit_blocking, read_all, EmbeddedStore};
    use super::super::{index_product, INDEX_VERSION_KEY, LIVE};
    use super::*;
    use crate::store::{Commit, ProductSort, ReadModel};

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

    /// Bounds that no test catalog reaches: the whole listing, exactly.
    const UNBOUNDED: ListingBounds = ListingBounds { narrow: usize::MAX, window: usize::MAX };

    /// The listing, checked against the reference rules applied to every stored product; and, as every page is a
    /// correct cut of the whole listing, against the unbounded listing too: equal when its total is exact, otherwise
    /// a prefix of the same page with a total that is a lower bound.
    fn listed(db: &Database, q: &ProductQuery, bounds: ListingBounds) -> (Page<Product>, Work) {
        let (page, work) = list(db, q, bounds).unwrap();
        let catalog = read_all::<Product>(db, PRODUCTS).unwrap();
        let expected = q.paginate_within(catalog.clone(), bounds);
        assert_eq!(
            (ids(&page), page.total, page.total_is_exact),
            (ids(&expected), expected.total, expected.total_is_exact),
            "{q:?} within {bounds:?}"
        );
        let whole = q.paginate_within(catalog, UNBOUNDED);
        assert!(whole.total_is_exact);
        if page.total_is_exact {
            assert_eq!((ids(&page), page.total), (ids(&whole), whole.total), "{q:?} within {bounds:?}");
        } else {
            assert!(ids(&whole).starts_with(&ids(&page)), "{q:?} within {bounds:?}");
            assert!(page.total <= whole.total, "{q:?} within {bounds:?}");
        }
        (page, work)
    }

    fn any_product() -> impl Strategy<Value = Product> {
        let titles =
            ["Red mug", "red MUG", "Blue mug", "Desk lamp", "Teapot", "Äpfel Öl", "a\u{0}b", "a", "mug-2000", ""];
        let descriptions = ["", "A red mug", "steel kettle 1.7 l", "mugs and more", "ÄPFEL", "mu ke 20"];
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
        let texts = [
            "mug",
            "MU",
            "red mug",
            "m",
            "ke",
            "2000",
            "20",
            "!!",
            "lamp desk",
            "äp",
            "äpf",
            "öl",
            "zzz",
            "a b",
            "mug mu",
            "red mug kettle steel more",
        ];
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

        /// Whatever was written, rewritten and deleted, a page is exactly the one the reference rules cut from the
        /// whole catalog, with the default bounds (which these catalogs never reach) and with bounds small enough
        /// to cut the listing.
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
            let cuts = [(0, 0), (0, 3), (1, 2), (2, 1), (3, 5), (8, 4)];
            for q in &queries {
                for (narrow, window) in cuts {
                    listed(&store.db, q, ListingBounds { narrow, window });
                }
                let (page, _) = listed(&store.db, q, ListingBounds::DEFAULT);
                prop_assert!(page.total_is_exact);
            }
        }
    }

    #[test]
    fn short_words_match_whole_words_and_longer_ones_beginnings() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        commit(&store.db, &product("a", "Red mug", "", 900, "kitchen", 1));
        commit(&store.db, &product("b", "Mu mugs", "", 900, "kitchen", 2));
        commit(&store.db, &product("c", "Teapot", "", 900, "kitchen", 3));
        let search = |text: &str| {
            let q = ProductQuery { page: 1, limit: 10, text: Some(text.into()), ..Default::default() };
            ids(&listed(&store.db, &q, ListingBounds::DEFAULT).0).into_iter().map(String::from).collect::<Vec<_>>()
        };
        assert_eq!(search("mu"), ["b"]);
        assert_eq!(search("mug"), ["b", "a"]);
        assert_eq!(search("te"), Vec::<String>::new());
        assert_eq!(search("tea"), ["c"]);
        assert_eq!(search("RE mug"), Vec::<String>::new());
        assert_eq!(search("red m"), Vec::<String>::new());
        assert_eq!(search("red mu"), Vec::<String>::new());
        assert_eq!(search("mu mug"), ["b"]);
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
            txn.delete_table(TERMS).unwrap();
            let mut counters = txn.open_table(COUNTERS).unwrap();
            for key in [INDEX_VERSION_KEY, LIVE, "catalog_live:kitchen", "catalog_live:office"] {
                counters.remove(key).unwrap();
            }
            drop(counters);
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let all = listed(&store.db, &ProductQuery { page: 1, limit: 10, ..Default::default() }, UNBOUNDED).0;
        assert_eq!((ids(&all), all.total), (vec!["b", "a"], 2));
        let q = ProductQuery {
            page: 1,
            limit: 10,
            text: Some("mu".into()),
            category: Some("KITCHEN".into()),
            ..Default::default()
        };
        assert_eq!(ids(&listed(&store.db, &q, UNBOUNDED).0), Vec::<&str>::new());
        let q = ProductQuery { text: Some("mug".into()), ..q };
        assert_eq!(ids(&listed(&store.db, &q, UNBOUNDED).0), ["a"]);
        // A window of one product: the terms index answers for it.
        let q = ProductQuery { text: Some("mug".into()), category: None, ..q };
        assert_eq!(ids(&listed(&store.db, &q, ListingBounds { narrow: 0, window: 1 }).0), Vec::<&str>::new());
        assert_eq!(ids(&listed(&store.db, &q, ListingBounds { narrow: 0, window: 2 }).0), ["a"]);
        // Writes after the rebuild keep the rebuilt indexes and counts right.
        commit(&store.db, &Product { deleted: true, ..product("a", "Red mug", "", 900, "Kitchen", 1) });
        let q = ProductQuery { page: 1, limit: 10, category: Some("kitchen".into()), ..Default::default() };
        assert_eq!(listed(&store.db, &q, UNBOUNDED).0.total, 0);
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
        let ListingBounds { narrow, window } = ListingBounds::DEFAULT;
        let bounded = |q: &ProductQuery| listed(&store.db, q, ListingBounds::DEFAULT);

        let (first, work) = bounded(&query(|_| {}));
        assert_eq!((first.items.len(), first.total as usize, first.total_is_exact), (20, live, true));
        assert_eq!(work, Work { index_entries: 20, documents: 20 });

        let (category, work) = bounded(&query(|q| q.category = Some("CAT3".into())));
        assert_eq!(category.items.len(), 20);
        assert_eq!(work, Work { index_entries: 20, documents: 20 });

        let deep = query(|q| q.page = 300);
        assert_eq!(bounded(&deep).1, Work { index_entries: 6_000, documents: 20 });

        // Past the end: nothing is read, the total comes from the counter.
        let (past, work) = bounded(&query(|q| (q.category, q.page) = (Some("cat3".into()), 26)));
        assert_eq!((past.items.len(), past.total, past.total_is_exact), (0, 500, true));
        assert_eq!(work, Work::default());
        let (past, work) = bounded(&query(|q| q.page = 4_000_000));
        assert_eq!((past.items.len(), past.total as usize), (0, live));
        assert_eq!(work, Work::default());

        // A price range sorted by price: the range up to the page, counted on to the bound.
        let priced = query(|q| {
            (q.min_price, q.max_price, q.sort, q.page) = (Some(1_000), Some(5_000), ProductSort::PriceAsc, 2)
        });
        let (page, work) = bounded(&priced);
        assert!(page.total > 300 && page.total < 500 && page.total_is_exact, "{}", page.total);
        assert_eq!(work, Work { index_entries: page.total as usize, documents: 20 });
        let (page, work) = bounded(&query(|q| (q.min_price, q.sort) = (Some(0), ProductSort::PriceDesc)));
        assert_eq!((page.items.len(), page.total as usize, page.total_is_exact), (20, narrow + 1, false));
        assert_eq!(work, Work { index_entries: narrow + 1, documents: 20 });

        // A narrow price range sorted otherwise: its products are checked and sorted, nothing else is read.
        let narrow_range = query(|q| (q.min_price, q.max_price) = (Some(1_000), Some(5_000)));
        let (page, work) = bounded(&narrow_range);
        assert!(page.total_is_exact);
        assert_eq!(work, Work { index_entries: 2 * page.total as usize, documents: 20 });

        // A rare word: its few products are checked and sorted.
        let (rare, work) = bounded(&query(|q| q.text = Some("LIMIT".into())));
        assert_eq!((rare.total, rare.total_is_exact), (20, true));
        assert_eq!(work, Work { index_entries: 40, documents: 20 });

        // Broad filters: the page is cut from the first `window` products of the sort index.
        let (common, work) = bounded(&query(|q| q.text = Some("ITEM ste".into())));
        assert!(common.total > 100 && !common.total_is_exact, "{}", common.total);
        assert_eq!(work, Work { index_entries: 2 * (narrow + 1) + 2 * window + 1, documents: 20 });
        let (wide, work) = bounded(&query(|q| (q.min_price, q.sort) = (Some(10_000), ProductSort::TitleAsc)));
        assert!(wide.total > 800 && !wide.total_is_exact, "{}", wide.total);
        assert_eq!(work, Work { index_entries: narrow + 1 + window + 1, documents: 20 });

        // Hostile shapes: however much of the catalog they would match, each reads a few thousand entries at most,
        // out of 10,000 products with 30,000 word entries.
        let hostile: [fn(&mut ProductQuery); 6] = [
            |q| q.text = Some("a e i o s".into()),
            |q| q.text = Some("red blu ste oak mug".into()),
            |q| (q.text, q.min_price) = (Some("eve ite red blu ste".into()), Some(0)),
            |q| (q.text, q.sort, q.page, q.limit) = (Some("eve ite".into()), ProductSort::TitleDesc, 100, 100),
            |q| (q.min_price, q.max_price, q.page) = (Some(0), Some(i64::MAX), 500),
            |q| (q.min_price, q.sort, q.category) = (Some(100), ProductSort::PriceAsc, Some("cat1".into())),
        ];
        for shape in hostile {
            let q = query(shape);
            let (_, work) = bounded(&q);
            assert!(work.index_entries <= 6 * (narrow + 1) + 2 * window + 1, "{q:?}: {work:?}");
            assert!(work.index_entries < 5_100 && work.documents <= q.limit as usize, "{q:?}: {work:?}");
        }
    }
}
