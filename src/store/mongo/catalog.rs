//! The catalog read model in MongoDB. Each product document holds, beside the product, what listings filter and
//! sort on: `categoryKey` (the category in ASCII lowercase, as listings compare categories), `titleKey` (the title
//! in lowercase), `createdKey` (a string that sorts like the creation time) and `words`, the distinct words of the
//! title and description ([`product_words`]). Every sort has a compound index led by `deleted` (so live products
//! are one range) for all products and one per category, ending in `id` so that ties are ordered by id in both
//! directions. A text query asks, for every search word of 3 or more characters, that some element of `words` lies
//! in the range of strings that begin with it, and for a shorter one that `words` holds it, which the multikey index
//! on `words` answers by a range scan or a point lookup; no regular expression is involved, so there is nothing to
//! escape.
//!
//! A listing reads no more than the bounds of the listing rules ([`ProductQuery::paginate_within`]) let it: a
//! filtered listing first asks each filter for at most `narrow + 1` documents to find a narrow one, and when there
//! is none, reads the first `window + 1` documents of the sort index (only their id, price and words) and cuts the
//! page from those that match, loading only the page's documents.

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Collection, IndexModel};

use super::{collect, find_page, from_doc, index, store_err, time_key, to_doc, MongoStore, PRODUCTS};
use crate::domain::product::Product;
use crate::store::{
    product_words, CatalogStore, ListingBounds, Page, ProductQuery, ProductSort, SearchTerm, StoreError,
};

pub(super) fn indexes() -> Vec<IndexModel> {
    let mut all = Vec::new();
    for sort in ["createdKey", "price", "titleKey"] {
        all.push(index(doc! {"deleted": 1, sort: 1, "id": 1}, None));
        all.push(index(doc! {"deleted": 1, "categoryKey": 1, sort: 1, "id": 1}, None));
    }
    all.push(index(doc! {"words": 1}, None));
    all
}

pub(super) fn product_document(p: &Product) -> Result<Document, StoreError> {
    let mut d = to_doc(p)?;
    d.insert("_id", &p.id);
    d.insert("categoryKey", p.category.to_ascii_lowercase());
    d.insert("titleKey", p.title.to_lowercase());
    d.insert("createdKey", time_key(&p.created_at));
    d.insert("words", product_words(p).into_iter().collect::<Vec<_>>());
    Ok(d)
}

/// The smallest string above every string that begins with `prefix`, if there is one.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Matches documents with a word that `term` matches: one that begins with it, or, for a short term, the word itself.
fn word_filter(term: &SearchTerm) -> Document {
    if !term.prefix {
        return doc! {"words": &term.word};
    }
    let range = match successor(&term.word) {
        Some(end) => doc! {"$gte": &term.word, "$lt": end},
        None => doc! {"$gte": &term.word},
    };
    doc! {"words": {"$elemMatch": range}}
}

/// The live products of the query's category, or of the catalog.
fn scope_filter(q: &ProductQuery) -> Document {
    let mut filter = doc! {"deleted": false};
    if let Some(c) = &q.category {
        filter.insert("categoryKey", c.to_ascii_lowercase());
    }
    filter
}

/// `filter` narrowed to the query's price range, if it has one.
fn priced(mut filter: Document, q: &ProductQuery) -> Document {
    if q.min_price.is_some() || q.max_price.is_some() {
        let mut range = Document::new();
        if let Some(min) = q.min_price {
            range.insert("$gte", min);
        }
        if let Some(max) = q.max_price {
            range.insert("$lte", max);
        }
        filter.insert("price", range);
    }
    filter
}

/// The query for [`ProductQuery::matches`].
fn filter(q: &ProductQuery) -> Document {
    let mut filter = priced(scope_filter(q), q);
    let terms = q.terms();
    if !terms.is_empty() {
        filter.insert("$and", terms.iter().map(word_filter).collect::<Vec<_>>());
    }
    filter
}

/// The order of [`ProductQuery::compare`]: a descending sort is the ascending one reversed, ties included.
fn sort(q: &ProductQuery) -> Document {
    let key = match q.sort {
        ProductSort::Newest | ProductSort::Oldest => "createdKey",
        ProductSort::PriceAsc | ProductSort::PriceDesc => "price",
        ProductSort::TitleAsc | ProductSort::TitleDesc => "titleKey",
    };
    let direction = if q.sort.descending() { -1 } else { 1 };
    doc! {key: direction, "id": direction}
}

#[async_trait]
impl CatalogStore for MongoStore {
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError> {
        let found = self.coll(PRODUCTS).find_one(doc! {"_id": id}).await.map_err(store_err)?;
        found.map(from_doc).transpose()
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        list(&self.coll(PRODUCTS), query, ListingBounds::DEFAULT).await
    }
}

/// One page by the rules of [`ProductQuery::paginate_within`].
async fn list(
    coll: &Collection<Document>,
    q: &ProductQuery,
    bounds: ListingBounds,
) -> Result<Page<Product>, StoreError> {
    let (terms, prices, (offset, limit)) = (q.terms(), q.price_range(), q.window());
    let page = |items: Vec<Product>, total: usize, total_is_exact: bool| Page {
        items,
        page: q.page,
        limit: q.limit,
        total: total as u64,
        total_is_exact,
    };
    if prices.is_some_and(|(min, max)| min > max) {
        return Ok(page(Vec::new(), 0, true));
    }
    if terms.is_empty() && prices.is_none() {
        return find_page(coll, filter(q), sort(q), q.page, q.limit).await;
    }
    if terms.is_empty() && q.sort.by_price() {
        // The page off the price range, and its total counted no further than the rules count it.
        let counted = bounds.narrow.max(offset + limit);
        let total = count(coll, filter(q), counted.saturating_add(1)).await?;
        let mut items = Vec::new();
        if limit > 0 && offset < total {
            let rows = coll.find(filter(q)).sort(sort(q)).skip(offset as u64).limit(limit as i64);
            items = collect(rows.await.map_err(store_err)?).await?;
        }
        return Ok(page(items, total, total <= counted));
    }
    if narrow(coll, q, &terms, bounds.narrow).await? {
        return find_page(coll, filter(q), sort(q), q.page, q.limit).await;
    }
    // Every filter is broad: the page is cut from the matches among the first `window` products in listing order.
    let window = if q.sort.by_price() { priced(scope_filter(q), q) } else { scope_filter(q) };
    let rows = coll
        .find(window)
        .sort(sort(q))
        .limit(i64::try_from(bounds.window.saturating_add(1)).unwrap_or(i64::MAX))
        .projection(doc! {"_id": 1, "price": 1, "words": 1})
        .await
        .map_err(store_err)?;
    let rows: Vec<Document> = collect(rows).await?;
    let total_is_exact = rows.len() <= bounds.window;
    let mut matching = Vec::new();
    for row in rows.iter().take(bounds.window) {
        let price = int(row, "price")?;
        let words = words(row)?;
        let priced_within = prices.is_none_or(|(min, max)| (min..=max).contains(&price));
        if priced_within && terms.iter().all(|t| words.iter().any(|w| t.matches(w))) {
            matching.push(row.get_str("_id").map_err(|e| StoreError::Corrupt(e.to_string()))?.to_string());
        }
    }
    let ids: Vec<&String> = matching.iter().skip(offset).take(limit).collect();
    let mut items = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let found: Vec<Product> = collect(coll.find(doc! {"_id": {"$in": &ids}}).await.map_err(store_err)?).await?;
        for id in &ids {
            let product = found.iter().find(|p| &&p.id == id);
            items.push(product.cloned().ok_or_else(|| StoreError::Corrupt(format!("product {id} went missing")))?);
        }
    }
    Ok(page(items, matching.len(), total_is_exact))
}

/// Whether one of the query's filters is narrow: a search term with at most `narrow` entries in the whole catalog (one
/// per product and distinct word it matches), or a price range with at most `narrow` products in the scope. Reads at
/// most `narrow + 1` documents per filter.
async fn narrow(
    coll: &Collection<Document>,
    q: &ProductQuery,
    terms: &[SearchTerm],
    narrow: usize,
) -> Result<bool, StoreError> {
    let cap = narrow.saturating_add(1);
    for term in terms {
        let mut live = word_filter(term);
        live.insert("deleted", false);
        let found = coll
            .find(live)
            .limit(i64::try_from(cap).unwrap_or(i64::MAX))
            .projection(doc! {"_id": 0, "words": 1})
            .await
            .map_err(store_err)?;
        let found: Vec<Document> = collect(found).await?;
        let mut entries = 0;
        for d in &found {
            entries += words(d)?.iter().filter(|w| term.matches(w)).count();
        }
        if found.len() < cap && entries <= narrow {
            return Ok(true);
        }
    }
    if q.price_range().is_some() {
        return Ok(count(coll, priced(scope_filter(q), q), cap).await? <= narrow);
    }
    Ok(false)
}

/// The number of documents matching `filter`, counted no further than `cap`.
async fn count(coll: &Collection<Document>, filter: Document, cap: usize) -> Result<usize, StoreError> {
    let n = coll.count_documents(filter).limit(cap as u64).await.map_err(store_err)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn int(d: &Document, field: &str) -> Result<i64, StoreError> {
    match d.get(field) {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        other => Err(StoreError::Corrupt(format!("`{field}` is not an integer: {other:?}"))),
    }
}

fn words(d: &Document) -> Result<Vec<&str>, StoreError> {
    let corrupt = || StoreError::Corrupt("`words` is not an array of strings".into());
    let words = d.get_array("words").map_err(|_| corrupt())?;
    words.iter().map(|w| w.as_str().ok_or_else(corrupt)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(successor("mu").as_deref(), Some("mv"));
        assert_eq!(successor("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(successor("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(successor("\u{10ffff}"), None);
        for word in ["mu", "äp", "z9"] {
            let end = successor(word).unwrap();
            for candidate in ["mu", "mug", "mv", "m", "äpfel", "äq", "z9z", "z:", "mu\u{10ffff}"] {
                let in_range = candidate >= word && candidate < end.as_str();
                assert_eq!(in_range, candidate.starts_with(word), "{candidate} against {word}");
            }
        }
    }

    #[test]
    fn a_query_without_words_filters_nothing_by_text() {
        let q = ProductQuery { text: Some(" !! ".into()), category: Some("KITCHEN".into()), ..Default::default() };
        assert_eq!(filter(&q), doc! {"deleted": false, "categoryKey": "kitchen"});
        let q = ProductQuery { text: Some("Mu mu red".into()), min_price: Some(5), ..Default::default() };
        let f = filter(&q);
        assert_eq!(f.get_document("price").unwrap(), &doc! {"$gte": 5_i64});
        let words = f.get_array("$and").unwrap();
        assert_eq!(words.len(), 2);
        assert_eq!(words[0].as_document().unwrap(), &doc! {"words": "mu"}, "a short word is matched whole");
    }
}
