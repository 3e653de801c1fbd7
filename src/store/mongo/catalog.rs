//! The catalog read model in MongoDB. Each product document holds, beside the product, what listings filter and
//! sort on: `categoryKey` (the category in ASCII lowercase, as listings compare categories), `titleKey` (the title
//! in lowercase), `createdKey` (a string that sorts like the creation time) and `words`, the distinct words of the
//! title and description ([`product_words`]). Every sort has a compound index led by `deleted` (so live products
//! are one range) for all products and one per category, ending in `id` so that ties are ordered by id in both
//! directions. A text query asks, for every word, that some element of `words` lies in the range of strings that
//! begin with it, which the multikey index on `words` answers by a range scan; no regular expression is involved,
//! so there is nothing to escape.

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::IndexModel;

use super::{find_page, from_doc, index, store_err, time_key, to_doc, MongoStore, PRODUCTS};
use crate::domain::product::Product;
use crate::store::{product_words, search_words, CatalogStore, Page, ProductQuery, ProductSort, StoreError};

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

/// Matches documents with a word that begins with `word`.
fn word_prefix(word: &str) -> Document {
    let range = match successor(word) {
        Some(end) => doc! {"$gte": word, "$lt": end},
        None => doc! {"$gte": word},
    };
    doc! {"words": {"$elemMatch": range}}
}

/// The query for [`ProductQuery::matches`].
fn filter(q: &ProductQuery) -> Document {
    let mut filter = doc! {"deleted": false};
    if let Some(c) = &q.category {
        filter.insert("categoryKey", c.to_ascii_lowercase());
    }
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
    let mut words = q.text.as_deref().map(search_words).unwrap_or_default();
    words.sort();
    words.dedup();
    if !words.is_empty() {
        filter.insert("$and", words.iter().map(|w| word_prefix(w)).collect::<Vec<_>>());
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
        find_page(&self.coll(PRODUCTS), filter(query), sort(query), query.page, query.limit).await
    }
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
        assert_eq!(f.get_array("$and").unwrap().len(), 2);
    }
}
