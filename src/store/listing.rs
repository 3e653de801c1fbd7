//! The product listing's rules, which every store's listing gives: which products a query matches, in what order,
//! the limits a query must keep, and how far a broad filtered listing reaches so that no listing costs in
//! proportion to the catalog. [`ProductQuery::paginate`] applies them to a whole catalog: it is the reference each
//! store's indexed listing is tested against.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::Page;
use crate::domain::product::Product;

/// A search word of fewer characters must be a whole word of the product; a longer one may begin a word.
pub const MIN_PREFIX_CHARS: usize = 3;
/// The longest `q`, in characters.
pub const MAX_QUERY_CHARS: usize = 100;
/// The most words `q` may hold.
pub const MAX_QUERY_WORDS: usize = 5;
/// How deep any listing can be paged: `page * limit` at most this, as search engines cap their result window.
pub const MAX_LISTING_DEPTH: u64 = 10_000;

/// How much a filtered listing (text, or a price range not sorted by price) reads before it settles for less than
/// the whole listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingBounds {
    /// A filter is narrow when it selects at most this many index entries: a search word counts one entry per
    /// product and distinct word of that product it matches (in the whole catalog), a price range one per product
    /// of the listing's category (or of the catalog) priced within it. A listing with a narrow filter is complete,
    /// and so is the total of a price range sorted by price that holds at most this many products.
    pub narrow: usize,
    /// A listing whose filters are all broad is cut from the first this-many products in its order: those of its
    /// category (or the catalog), and of its price range when it is sorted by price.
    pub window: usize,
}

impl ListingBounds {
    pub const DEFAULT: Self = Self { narrow: 500, window: 1_000 };
}

impl Default for ListingBounds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProductSort {
    #[default]
    Newest,
    Oldest,
    PriceAsc,
    PriceDesc,
    TitleAsc,
    TitleDesc,
}

impl ProductSort {
    pub fn descending(self) -> bool {
        matches!(self, Self::Newest | Self::PriceDesc | Self::TitleDesc)
    }

    pub fn by_price(self) -> bool {
        matches!(self, Self::PriceAsc | Self::PriceDesc)
    }
}

impl std::str::FromStr for ProductSort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "newest" | "-createdAt" => Self::Newest,
            "oldest" | "createdAt" => Self::Oldest,
            "price" | "price_asc" => Self::PriceAsc,
            "-price" | "price_desc" => Self::PriceDesc,
            "title" => Self::TitleAsc,
            "-title" => Self::TitleDesc,
            other => return Err(format!("unknown sort `{other}`; use newest, oldest, price, -price, title or -title")),
        })
    }
}

/// The words a text is searched by: its runs of letters and digits, in lowercase.
pub fn search_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The distinct words of a product's title and description.
pub fn product_words(p: &Product) -> BTreeSet<String> {
    search_words(&p.title).into_iter().chain(search_words(&p.description)).collect()
}

/// One word of a search, and how it matches a product's word.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SearchTerm {
    pub word: String,
    /// Whether the word may begin a product's word (it has at least [`MIN_PREFIX_CHARS`] characters) or must equal
    /// one.
    pub prefix: bool,
}

impl SearchTerm {
    pub fn matches(&self, product_word: &str) -> bool {
        if self.prefix {
            product_word.starts_with(&self.word)
        } else {
            product_word == self.word
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProductQuery {
    pub page: u32,
    pub limit: u32,
    /// Words that must all be found in the title or description (see [`ProductQuery::terms`]). A text without any
    /// word filters nothing.
    pub text: Option<String>,
    pub category: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub sort: ProductSort,
}

impl ProductQuery {
    /// Refuses a query past the listing's limits, saying which.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(text) = &self.text {
            if text.chars().count() > MAX_QUERY_CHARS {
                return Err(format!("`q` must be at most {MAX_QUERY_CHARS} characters"));
            }
            let words = search_words(text).len();
            if words > MAX_QUERY_WORDS {
                return Err(format!("`q` must be at most {MAX_QUERY_WORDS} words; it has {words}"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_price, self.max_price) {
            if min > max {
                return Err("`minPrice` is greater than `maxPrice`".into());
            }
        }
        if u64::from(self.page) * u64::from(self.limit) > MAX_LISTING_DEPTH {
            return Err(format!(
                "`page` x `limit` must be at most {MAX_LISTING_DEPTH}: a listing pages through its first \
                 {MAX_LISTING_DEPTH} products only; use filters to narrow the listing"
            ));
        }
        Ok(())
    }

    /// The distinct words of `text`, each matching the beginning of a product's word if it has at least
    /// [`MIN_PREFIX_CHARS`] characters, or a whole word if shorter.
    pub fn terms(&self) -> Vec<SearchTerm> {
        let words: BTreeSet<String> = self.text.as_deref().map(search_words).unwrap_or_default().into_iter().collect();
        words.into_iter().map(|word| SearchTerm { prefix: word.chars().count() >= MIN_PREFIX_CHARS, word }).collect()
    }

    /// The price range, if the query has one: `min..=max`, open ends as the extreme values.
    pub fn price_range(&self) -> Option<(i64, i64)> {
        (self.min_price.is_some() || self.max_price.is_some())
            .then(|| (self.min_price.unwrap_or(i64::MIN), self.max_price.unwrap_or(i64::MAX)))
    }

    /// The positions of the page in the listing: `offset..offset + limit`.
    pub fn window(&self) -> (usize, usize) {
        ((self.page.saturating_sub(1) as usize).saturating_mul(self.limit as usize), self.limit as usize)
    }

    fn in_scope(&self, p: &Product) -> bool {
        !p.deleted && self.category.as_ref().is_none_or(|c| p.category.eq_ignore_ascii_case(c))
    }

    fn priced_within(&self, p: &Product) -> bool {
        self.price_range().is_none_or(|(min, max)| (min..=max).contains(&p.price))
    }

    /// Whether a product belongs in this listing (deleted products never do).
    pub fn matches(&self, p: &Product) -> bool {
        if !self.in_scope(p) || !self.priced_within(p) {
            return false;
        }
        let words = product_words(p);
        self.terms().iter().all(|t| words.iter().any(|w| t.matches(w)))
    }

    /// The listing order. Equal values are ordered by id, and a descending sort is exactly the ascending one
    /// reversed, so one ascending index per sort serves both directions.
    pub fn compare(&self, a: &Product, b: &Product) -> Ordering {
        let ascending = match self.sort {
            ProductSort::Newest | ProductSort::Oldest => a.created_at.cmp(&b.created_at),
            ProductSort::PriceAsc | ProductSort::PriceDesc => a.price.cmp(&b.price),
            ProductSort::TitleAsc | ProductSort::TitleDesc => a.title.to_lowercase().cmp(&b.title.to_lowercase()),
        }
        .then_with(|| a.id.cmp(&b.id));
        if self.sort.descending() {
            ascending.reverse()
        } else {
            ascending
        }
    }

    /// Filters, sorts and cuts one page out of `products` with the default bounds.
    pub fn paginate(&self, products: impl IntoIterator<Item = Product>) -> Page<Product> {
        self.paginate_within(products, ListingBounds::DEFAULT)
    }

    /// The listing rules applied to a whole catalog, which every store's indexed listing must agree with:
    /// - no text and no price range: every product of the scope (the category, or the catalog), total exact;
    /// - a price range sorted by price: the products in the range; the total is exact up to
    ///   `max(bounds.narrow, offset + limit)` and beyond that reports one more, as a lower bound;
    /// - otherwise, with a narrow filter (see [`ListingBounds::narrow`]): every match, total exact;
    /// - otherwise: the matches among the first `bounds.window` products in listing order of the scope (and of the
    ///   price range when sorted by price), total exact only when that window held all of those products.
    pub fn paginate_within(&self, products: impl IntoIterator<Item = Product>, bounds: ListingBounds) -> Page<Product> {
        let live: Vec<Product> = products.into_iter().filter(|p| !p.deleted).collect();
        let terms = self.terms();
        let entries = |t: &SearchTerm| -> usize {
            live.iter().map(|p| product_words(p).iter().filter(|w| t.matches(w)).count()).sum()
        };
        let narrow_word = terms.iter().any(|t| entries(t) <= bounds.narrow);
        let mut scope: Vec<Product> = live.into_iter().filter(|p| self.in_scope(p)).collect();
        scope.sort_by(|a, b| self.compare(a, b));
        let (offset, limit) = self.window();
        let page = |hits: Vec<Product>, total: usize, total_is_exact: bool| Page {
            items: hits.into_iter().skip(offset).take(limit).collect(),
            page: self.page,
            limit: self.limit,
            total: total as u64,
            total_is_exact,
        };
        let priced = scope.iter().filter(|p| self.priced_within(p)).count();
        let mut hits: Vec<Product> = scope.iter().filter(|p| self.matches(p)).cloned().collect();
        let total = hits.len();
        if terms.is_empty() && (self.price_range().is_none() || self.sort.by_price()) {
            let counted = bounds.narrow.max(offset + limit);
            if self.price_range().is_some() && total > counted {
                return page(hits, counted + 1, false);
            }
            return page(hits, total, true);
        }
        if narrow_word || (self.price_range().is_some() && priced <= bounds.narrow) {
            return page(hits, total, true);
        }
        if self.sort.by_price() {
            scope.retain(|p| self.priced_within(p));
        }
        hits = scope.iter().take(bounds.window).filter(|p| self.matches(p)).cloned().collect();
        let total = hits.len();
        page(hits, total, scope.len() <= bounds.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str, page: u32, limit: u32) -> ProductQuery {
        ProductQuery { page, limit, text: Some(text.into()), ..Default::default() }
    }

    #[test]
    fn limits_are_inclusive_and_count_characters_and_words() {
        assert_eq!(query(&"ä".repeat(100), 1, 20).validate(), Ok(()));
        assert!(query(&"a".repeat(101), 1, 20).validate().unwrap_err().contains("100 characters"));
        assert_eq!(query("one two, three-four 5", 1, 20).validate(), Ok(()));
        assert!(query("one two three four 5 6", 1, 20).validate().unwrap_err().contains("it has 6"));
        assert_eq!(query("", 100, 100).validate(), Ok(()));
        assert_eq!(query("", 10_000, 1).validate(), Ok(()));
        for (page, limit) in [(101, 100), (10_001, 1), (u32::MAX, 100)] {
            let refused = query("", page, limit).validate().unwrap_err();
            assert!(refused.contains("use filters to narrow the listing"), "{refused}");
        }
        let q = ProductQuery { min_price: Some(2), max_price: Some(1), ..query("", 1, 1) };
        assert!(q.validate().is_err());
    }

    #[test]
    fn words_under_three_characters_are_whole_words() {
        let terms = query("Mug MU äp äpf mu 7", 1, 1).terms();
        let shown: Vec<(&str, bool)> = terms.iter().map(|t| (t.word.as_str(), t.prefix)).collect();
        assert_eq!(shown, [("7", false), ("mu", false), ("mug", true), ("äp", false), ("äpf", true)]);
        let mu = &terms[1];
        assert!(mu.matches("mu") && !mu.matches("mug"));
        assert!(terms[2].matches("mugs") && !terms[2].matches("smug"));
    }
}
