//! `commercex seed-demo`: a small catalog, a coupon and two accounts, so a new user has something to click through.
//! Everything goes through the same services as the API (product, coupon and account rules, events, read models).
//! Run again, it adds nothing twice: the catalog only into an empty catalog, the accounts and the coupon only when
//! missing. It creates an administrator whose password is published here, so it refuses a store holding accounts
//! other than its own (a shop's) unless forced.

use crate::domain::coupon::{CouponCommand, CouponError, CouponTerms, Discount};
use crate::domain::product::ProductDetails;
use crate::http::AppServices;
use crate::store::ProductQuery;

pub const SHOPPER: (&str, &str) = ("shopper@example.com", "demo-shopper-1");
pub const ADMIN: (&str, &str) = ("admin@example.com", "demo-admin-1");
pub const COUPON: &str = "WELCOME10";

/// (title, description, price in cents, category, stock)
const PRODUCTS: [(&str, &str, i64, &str, i64); 12] = [
    ("Stoneware mug", "A 350 ml mug, glazed in sea blue, dishwasher safe.", 1_450, "Kitchen", 120),
    ("Pour-over coffee maker", "Glass carafe with a steel filter; brews 4 cups.", 3_900, "Kitchen", 40),
    ("Chef's knife", "20 cm blade of high-carbon steel with an oak handle.", 8_900, "Kitchen", 15),
    ("Cast iron skillet", "26 cm, pre-seasoned, for stove, oven and fire.", 4_500, "Kitchen", 3),
    ("Desk lamp", "Brass arm, warm LED, dimmable in five steps.", 6_900, "Office", 25),
    ("Notebook, dotted", "A5, 192 pages of 100 g paper that fountain pens like.", 1_900, "Office", 200),
    ("Fountain pen", "Steel nib, medium; takes cartridges and a converter.", 3_200, "Office", 0),
    ("Walnut monitor stand", "Raises a screen by 10 cm and keeps the desk clear.", 7_500, "Office", 12),
    ("Trail backpack, 28 l", "Water-resistant, with a hip belt and a rain cover.", 11_900, "Outdoor", 18),
    ("Insulated bottle", "750 ml steel bottle: cold for 24 hours, hot for 12.", 2_900, "Outdoor", 80),
    ("Camping stove", "Folding gas stove, 2.8 kW, with a piezo igniter.", 5_400, "Outdoor", 6),
    ("Wool beanie", "Merino wool, one size, in forest green.", 2_400, "Outdoor", 60),
];

/// What seeding added (and what it found already there).
#[derive(Debug, Default)]
pub struct Seeded {
    pub products: usize,
    pub products_present: u64,
    pub accounts: Vec<&'static str>,
    pub coupon: bool,
}

/// Seeds through `services`; unless `force`, only a store whose accounts, if any, are the demo's own.
pub async fn seed(services: &AppServices, force: bool) -> anyhow::Result<Seeded> {
    if !force {
        let others = services.auth.list_users(1, 3).await?;
        let foreign: Vec<&str> = others
            .items
            .iter()
            .map(|u| u.email.as_str())
            .filter(|email| *email != ADMIN.0 && *email != SHOPPER.0)
            .collect();
        if !foreign.is_empty() {
            anyhow::bail!(
                "this store has accounts of its own ({}{}); seed-demo would add an administrator with a published \
                 password ({}). Pass --force to seed it anyway",
                foreign.join(", "),
                if others.total > 3 { ", ..." } else { "" },
                ADMIN.0
            );
        }
    }
    let mut seeded = Seeded::default();
    let present = services.catalog.list(&ProductQuery { page: 1, limit: 1, ..Default::default() }).await?.total;
    seeded.products_present = present;
    if present == 0 {
        for (title, description, price, category, stock) in PRODUCTS {
            let details = ProductDetails {
                title: Some(title.into()),
                description: Some(description.into()),
                price: Some(price),
                currency: Some("USD".into()),
                category: Some(category.into()),
                image_url: Some(None),
            };
            services.catalog.create(details, stock).await?;
            seeded.products += 1;
        }
    }
    if services.auth.ensure_admin(ADMIN.0, ADMIN.1).await? {
        seeded.accounts.push(ADMIN.0);
    }
    match services.auth.signup(SHOPPER.0, SHOPPER.1, "Demo Shopper").await {
        Ok(_) => seeded.accounts.push(SHOPPER.0),
        Err(crate::auth::AuthError::EmailTaken) => {}
        Err(e) => return Err(e.into()),
    }
    let terms = CouponTerms {
        discount: Discount::Percent { percent: 10 },
        min_order: Some(2_000),
        min_order_currency: Some("USD".into()),
        expires_at: None,
        usage_limit: None,
        per_user_limit: Some(1),
    };
    match services.coupons.execute(COUPON, CouponCommand::Create(terms)).await {
        Ok(_) => seeded.coupon = true,
        Err(crate::actors::EntityError::Rejected(CouponError::AlreadyExists)) => {}
        Err(e) => return Err(anyhow::anyhow!("creating coupon {COUPON}: {e}")),
    }
    Ok(seeded)
}

impl std::fmt::Display for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.products > 0 {
            writeln!(f, "added {} products in Kitchen, Office and Outdoor", self.products)?;
        } else {
            writeln!(f, "the catalog already holds {} products: none added", self.products_present)?;
        }
        for (email, password) in [ADMIN, SHOPPER] {
            if self.accounts.contains(&email) {
                writeln!(f, "account {email} created, password {password}")?;
            } else {
                writeln!(f, "account {email} already there (its password unchanged)")?;
            }
        }
        let state = if self.coupon { "created" } else { "already there" };
        write!(f, "coupon {COUPON}: 10% off orders from 20.00, once per user ({state})")
    }
}
