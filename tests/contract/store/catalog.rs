//! The product listing: the rules of `ProductQuery` (search over title and description by word beginnings, or whole
//! words for words under 3 characters, category ignoring ASCII case, inclusive price range, six sorts with ties by
//! id, deleted products never listed, the total and whether it is exact, the bounds of a broad listing), on
//! hand-picked catalogs and, against `ProductQuery::paginate` as the reference, on random ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use commercex::domain::product::Product;
use commercex::store::{Page, ProductQuery, ProductSort, ReadModel, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fixtures::{commit, product, with_model};

const SORTS: [ProductSort; 6] = [
    ProductSort::Newest,
    ProductSort::Oldest,
    ProductSort::PriceAsc,
    ProductSort::PriceDesc,
    ProductSort::TitleAsc,
    ProductSort::TitleDesc,
];

/// Writes products as their actors do, one commit each on the product's stream, and remembers the latest version
/// of every product as the reference catalog.
struct Catalog {
    store: Arc<dyn Store>,
    seqs: BTreeMap<String, u64>,
    latest: BTreeMap<String, Product>,
}

impl Catalog {
    fn new(store: Arc<dyn Store>) -> Self {
        Self { store, seqs: BTreeMap::new(), latest: BTreeMap::new() }
    }

    async fn put(&mut self, p: Product) {
        let seq = self.seqs.entry(p.id.clone()).or_default();
        let c =
            with_model(commit(&format!("product:{}", p.id), *seq, *seq + 1..=*seq + 1), ReadModel::Product(p.clone()));
        self.store.commit(c).await.unwrap();
        *seq += 1;
        self.latest.insert(p.id.clone(), p);
    }

    async fn list(&self, q: &ProductQuery) -> Page<Product> {
        self.store.list_products(q).await.unwrap()
    }

    /// The listing, checked against the reference rules applied to the whole catalog; returns the ids listed.
    async fn check(&self, q: &ProductQuery) -> (Vec<String>, u64) {
        let page = self.list(q).await;
        let expected = q.paginate(self.latest.values().cloned());
        assert_eq!(page.items, expected.items, "{q:?}");
        assert_eq!(
            (page.total, page.total_is_exact, page.page, page.limit),
            (expected.total, expected.total_is_exact, q.page, q.limit),
            "{q:?}"
        );
        (page.items.iter().map(|p| p.id.clone()).collect(), page.total)
    }
}

fn query(f: impl FnOnce(&mut ProductQuery)) -> ProductQuery {
    let mut q = ProductQuery { page: 1, limit: 50, ..Default::default() };
    f(&mut q);
    q
}

pub async fn listing_follows_the_listing_rules(store: Arc<dyn Store>) {
    let mut catalog = Catalog::new(store);
    let products = [
        product("p1", "Red mug", "Stoneware, dishwasher safe", 900, "Kitchen", 10),
        product("p2", "Teapot", "Cast iron tea pot", 4_500, "kitchen", 20),
        product("p3", "Desk lamp", "Brass; 40W bulb", 4_500, "Office", 20),
        product("p4", "mug-2000", "Blue MUG", 1_000, "KITCHEN", 30),
        product("p5", "Äpfel Öl", "ünïcode ÉCLAIR", 0, "äb", 30),
        product("p6", "red MUG", "", 900, "kitchenware", 40),
    ];
    for p in products {
        catalog.put(p).await;
    }
    catalog.put(Product { deleted: true, ..product("p7", "Red mug (old)", "mug", 900, "kitchen", 50) }).await;

    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Word beginnings, in any case, in title or description; every word must match; a word of 1 or 2 characters
    // only as a whole word.
    let text = |t: &str| query(|q| q.text = Some(t.into()));
    assert_eq!(catalog.check(&text("tea")).await.0, ids(&["p2"]));
    assert!(catalog.check(&text("pot")).await.0 == ids(&["p2"]), "\"pot\" begins a word of the description");
    assert!(catalog.check(&text("eapot")).await.0.is_empty(), "a word's middle is not searched");
    assert_eq!(catalog.check(&text("RED mug")).await.0, ids(&["p6", "p1"]));
    assert!(catalog.check(&text("RED mu")).await.0.is_empty(), "\"mu\" is not a word of theirs");
    assert_eq!(catalog.check(&text("ÖL")).await.0, ids(&["p5"]), "a short word matches a whole word");
    assert_eq!(catalog.check(&text("mug")).await, (ids(&["p6", "p4", "p1"]), 3));
    assert_eq!(catalog.check(&text("2000 blue")).await.0, ids(&["p4"]));
    assert_eq!(catalog.check(&text("äpf ÖL écl")).await.0, ids(&["p5"]));
    assert!(catalog.check(&text("äp")).await.0.is_empty());
    assert_eq!(catalog.check(&text("40w")).await.0, ids(&["p3"]));
    assert!(catalog.check(&text("mug lamp")).await.0.is_empty());
    assert!(catalog.check(&text("mugs")).await.0.is_empty());
    assert_eq!(catalog.check(&text(".*")).await.1, 6, "no letters or digits: nothing filtered, nothing escaped");
    assert!(catalog.check(&text("m.g")).await.0.is_empty(), "punctuation separates words: \"m\" and \"g\"");
    assert_eq!(catalog.check(&text("40 w")).await.0, ids(&[] as &[&str]), "\"40w\" is one word");
    assert_eq!(catalog.check(&text("(red")).await.0, ids(&["p6", "p1"]));

    // Category ignoring ASCII case only; inclusive prices.
    let in_category = |c: &str| query(|q| q.category = Some(c.into()));
    assert_eq!(catalog.check(&in_category("kitchen")).await.1, 3);
    assert_eq!(catalog.check(&in_category("KITCHEN")).await.0, ids(&["p4", "p2", "p1"]));
    assert_eq!(catalog.check(&in_category("ÄB")).await.1, 0);
    assert_eq!(catalog.check(&in_category("äB")).await.0, ids(&["p5"]));
    assert_eq!(catalog.check(&in_category("kitchen.*")).await.1, 0);
    let priced = |min: Option<i64>, max: Option<i64>| query(|q| (q.min_price, q.max_price) = (min, max));
    assert_eq!(catalog.check(&priced(Some(900), Some(1_000))).await.1, 3);
    assert_eq!(catalog.check(&priced(None, Some(0))).await.0, ids(&["p5"]));
    assert_eq!(catalog.check(&priced(Some(4_500), None)).await.1, 2);
    assert_eq!(catalog.check(&priced(Some(1_000), Some(999))).await, (vec![], 0));

    // Every sort, with ties by id; a descending sort is the ascending one reversed.
    for pair in SORTS.chunks(2) {
        let (down, up) = if pair[0].descending() { (pair[0], pair[1]) } else { (pair[1], pair[0]) };
        let (mut reversed, _) = catalog.check(&query(|q| q.sort = down)).await;
        reversed.reverse();
        assert_eq!(catalog.check(&query(|q| q.sort = up)).await.0, reversed);
    }
    assert_eq!(
        catalog.check(&query(|q| q.sort = ProductSort::PriceAsc)).await.0,
        ids(&["p5", "p1", "p6", "p4", "p2", "p3"])
    );
    assert_eq!(
        catalog.check(&query(|q| q.sort = ProductSort::TitleAsc)).await.0,
        ids(&["p3", "p4", "p1", "p6", "p2", "p5"])
    );

    // Pages: the total counts every match; past the end there are no items.
    for page in 1..=4 {
        catalog.check(&query(|q| (q.page, q.limit, q.sort) = (page, 2, ProductSort::Oldest))).await;
    }
    assert_eq!(catalog.check(&query(|q| (q.page, q.limit) = (4, 2))).await, (vec![], 6));
    assert_eq!(catalog.check(&query(|q| q.limit = 0)).await, (vec![], 6));

    // An edited product moves between listings; a deleted one leaves them all.
    let mut mug = catalog.latest["p1"].clone();
    (mug.title, mug.category, mug.price, mug.version) = ("Blue cup".into(), "office".into(), 100, 2);
    catalog.put(mug.clone()).await;
    assert_eq!(catalog.check(&text("red")).await.0, ids(&["p6"]));
    assert_eq!(catalog.check(&text("cup")).await.0, ids(&["p1"]));
    assert_eq!(catalog.check(&in_category("office")).await.0, ids(&["p3", "p1"]));
    mug.stock_on_hand = 0;
    catalog.put(mug.clone()).await;
    catalog.put(Product { deleted: true, version: 3, ..mug }).await;
    assert!(catalog.check(&text("cup")).await.0.is_empty());
    assert_eq!(catalog.check(&query(|_| {})).await.1, 5);
}

fn random_product(rng: &mut StdRng) -> Product {
    // No control characters: the domain refuses them in every text field.
    const TITLES: [&str; 11] = [
        "Red mug",
        "red MUG",
        "Blue mug",
        "Desk lamp",
        "Teapot",
        "Äpfel Öl",
        "a",
        "mug-2000",
        "",
        "Mugs & more",
        "Zebra",
    ];
    const DESCRIPTIONS: [&str; 6] = ["", "A red mug", "steel kettle 1.7 l", "mugs and more", "ÄPFEL", "tea (loose)"];
    const CATEGORIES: [&str; 5] = ["kitchen", "Kitchen", "office", "ÄB", "äb"];
    let price = match rng.gen_range(0..10) {
        0 => i64::MIN,
        1 => i64::MAX,
        _ => rng.gen_range(-3..4),
    };
    let id = rng.gen_range(0..16);
    let mut p = product(
        &format!("p{id:02}"),
        TITLES[rng.gen_range(0..TITLES.len())],
        DESCRIPTIONS[rng.gen_range(0..DESCRIPTIONS.len())],
        price,
        CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
        rng.gen_range(-2..3),
    );
    p.deleted = id % 3 == 0 && rng.gen_bool(0.5);
    p.stock_on_hand = rng.gen_range(0..3);
    p
}

fn random_query(rng: &mut StdRng) -> ProductQuery {
    const TEXTS: [&str; 14] =
        ["mug", "MU", "red mug", "m", "ke", "2000", "!!", "lamp desk", "äp", "öl", "zzz", "a b", "tea", "1 7"];
    const CATEGORIES: [&str; 6] = ["kitchen", "KITCHEN", "office", "äb", "ÄB", "none"];
    let maybe = |rng: &mut StdRng| rng.gen_bool(0.4);
    ProductQuery {
        page: rng.gen_range(1..4),
        limit: rng.gen_range(1..6),
        text: maybe(rng).then(|| TEXTS[rng.gen_range(0..TEXTS.len())].to_string()),
        category: maybe(rng).then(|| CATEGORIES[rng.gen_range(0..CATEGORIES.len())].to_string()),
        min_price: maybe(rng).then(|| rng.gen_range(-4..5)),
        max_price: maybe(rng).then(|| rng.gen_range(-4..5)),
        sort: SORTS[rng.gen_range(0..SORTS.len())],
    }
}

/// Random catalogs (written, rewritten, deleted) and random queries: every page equals the one the reference rules
/// cut from the whole catalog.
pub async fn listing_equals_the_reference_on_random_catalogs(store: Arc<dyn Store>) {
    let mut rng = StdRng::seed_from_u64(0x5eed_ca7a_1065);
    let mut catalog = Catalog::new(store);
    for _round in 0..4 {
        for _ in 0..10 {
            let p = random_product(&mut rng);
            catalog.put(p).await;
        }
        for _ in 0..40 {
            catalog.check(&random_query(&mut rng)).await;
        }
    }
}

/// A catalog past the bounds: 1,050 products, all titled "mug". A search for "mug" or a price range from 0 is broad
/// and cut from the first 1,000 products in listing order; a narrow price range, a rare word or a category of 525 is
/// listed whole; a price range sorted by price is counted to 500 (or the page's end).
pub async fn broad_listings_are_cut_by_the_bounds(store: Arc<dyn Store>) {
    let mut catalog = Catalog::new(store);
    for i in 0..1_050i64 {
        let p = product(&format!("p{i:04}"), &format!("Mug {i}"), "", i, &format!("c{}", i % 2), i);
        catalog.put(p).await;
    }
    // A query, and the items, total and exactness of its page.
    type Case = (fn(&mut ProductQuery), usize, u64, bool);
    let cases: [Case; 11] = [
        (|q| q.text = Some("mug".into()), 50, 1_000, false),
        (|q| (q.text, q.sort, q.page) = (Some("mug".into()), ProductSort::TitleAsc, 20), 50, 1_000, false),
        (|q| (q.text, q.page) = (Some("mug".into()), 21), 0, 1_000, false),
        (|q| (q.text, q.category) = (Some("mug".into()), Some("C1".into())), 50, 525, true),
        (|q| q.text = Some("mug 7".into()), 1, 1, true),
        (|q| q.min_price = Some(0), 50, 1_000, false),
        (|q| (q.min_price, q.max_price) = (Some(100), Some(599)), 50, 500, true),
        (|q| (q.text, q.min_price, q.sort) = (Some("mug".into()), Some(40), ProductSort::PriceAsc), 50, 1_000, false),
        (|q| (q.min_price, q.sort) = (Some(0), ProductSort::PriceDesc), 50, 501, false),
        (|q| (q.min_price, q.sort, q.page) = (Some(0), ProductSort::PriceAsc, 16), 50, 801, false),
        (|q| (q.min_price, q.max_price, q.sort) = (Some(0), Some(499), ProductSort::PriceAsc), 50, 500, true),
    ];
    for (shape, items, total, exact) in cases {
        let q = query(shape);
        let page = catalog.list(&q).await;
        assert_eq!((page.items.len(), page.total, page.total_is_exact), (items, total, exact), "{q:?}");
        catalog.check(&q).await;
    }
}
