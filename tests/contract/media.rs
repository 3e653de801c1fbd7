//! The media store contract: what product image uploads rely on, checked on a local directory and on an
//! S3-compatible server (moto at `COMMERCEX_TEST_S3_ENDPOINT`, bucket `COMMERCEX_TEST_S3_BUCKET`, both from
//! `scripts/infra.sh env`). Every check writes under product ids of its own.

use axum::body::Bytes;
use commercex::config::{MediaBackend, MediaConfig};
use commercex::media::{ImageFormat, MediaError, MediaStore};

fn product_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn png(payload: &[u8]) -> Bytes {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(payload);
    Bytes::from(bytes)
}

/// The file part of a stored image's name.
fn file_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

pub async fn images_are_read_back_as_stored(media: MediaStore) {
    let id = product_id();
    let jpeg = Bytes::from([&b"\xFF\xD8\xFF\xE0"[..], &[7u8; 3000]].concat());
    let stored = media.put_product_image(&id, jpeg.clone()).await.expect("stored");
    assert_eq!(stored.format, ImageFormat::Jpeg);
    assert!(stored.name.starts_with(&format!("products/{id}/")) && stored.name.ends_with(".jpg"), "{}", stored.name);
    assert_eq!(stored.url(), format!("/media/{}", stored.name));
    let image = media.product_image(&id, file_of(&stored.name)).await.unwrap().expect("found");
    assert_eq!((image.format, image.size), (ImageFormat::Jpeg, jpeg.len() as u64));
    // Security review L7: in a bucket the object carries its type (a local file has no metadata to carry).
    let expected_type = (media.backend() == "s3").then(|| "image/jpeg".to_string());
    assert_eq!(image.stored_type, expected_type);
    assert_eq!(image.bytes().await.unwrap(), jpeg);
    assert!(media.has_product_image(&id, file_of(&stored.name)).await.unwrap());

    // A megabyte and a half, byte for byte.
    let large: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stored = media.put_product_image(&id, png(&large)).await.expect("stored");
    let image = media.product_image(&id, file_of(&stored.name)).await.unwrap().expect("found");
    assert_eq!(image.bytes().await.unwrap(), png(&large));
}

pub async fn names_follow_the_content(media: MediaStore) {
    let id = product_id();
    let first = media.put_product_image(&id, png(b"one")).await.unwrap();
    let again = media.put_product_image(&id, png(b"one")).await.unwrap();
    let other = media.put_product_image(&id, png(b"two")).await.unwrap();
    assert_eq!(first, again, "the same bytes keep their name");
    assert_ne!(first.name, other.name, "other bytes get another name");
    // Both stay readable: a page still showing the old image keeps working.
    for stored in [&first, &other] {
        assert!(media.product_image(&id, file_of(&stored.name)).await.unwrap().is_some());
    }
    // Another product's images are its own.
    let elsewhere = product_id();
    assert!(media.product_image(&elsewhere, file_of(&first.name)).await.unwrap().is_none());
}

pub async fn only_images_are_stored(media: MediaStore) {
    let id = product_id();
    for not_an_image in [&b""[..], b"GIF89a....", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"plain text"] {
        let refused = media.put_product_image(&id, Bytes::from_static(not_an_image)).await;
        assert!(matches!(refused, Err(MediaError::UnsupportedFormat)), "{not_an_image:?}: {refused:?}");
    }
    for bad_id in ["../x", "a/b", ""] {
        let refused = media.put_product_image(bad_id, png(b"x")).await;
        assert!(matches!(refused, Err(MediaError::InvalidName)), "{bad_id:?}: {refused:?}");
    }
}

pub async fn unknown_names_find_nothing(media: MediaStore) {
    let id = product_id();
    let stored = media.put_product_image(&id, png(b"kept")).await.unwrap();
    let file = file_of(&stored.name);
    let hash = file.split('.').next().unwrap();
    for name in [
        format!("{hash}.jpg"),             // another extension
        format!("{}.png", "0".repeat(32)), // nothing stored there
        hash.to_string(),                  // no extension
        "..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("../{id}/{file}"),
    ] {
        assert!(media.product_image(&id, &name).await.unwrap().is_none(), "{name}");
        assert!(!media.has_product_image(&id, &name).await.unwrap(), "{name}");
    }
    assert!(media.product_image("..", file).await.unwrap().is_none());
}

pub fn s3_config() -> MediaConfig {
    let required = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run scripts/test.sh, or scripts/infra.sh up s3 and eval \"$(scripts/infra.sh env)\"")
        })
    };
    let mut config = MediaConfig { backend: MediaBackend::S3, ..MediaConfig::default() };
    config.s3.endpoint = required("COMMERCEX_TEST_S3_ENDPOINT");
    config.s3.bucket = required("COMMERCEX_TEST_S3_BUCKET");
    config.s3.access_key_id = "commercex-test".into();
    config.s3.secret_access_key = "commercex-test-secret".into();
    config
}

macro_rules! media_contract {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(commercex::media::MediaStore::local(dir.path()).unwrap()).await;
            })*
        }

        mod s3 {
            $(#[tokio::test]
            #[ignore = "needs the real servers: scripts/test.sh"]
            async fn $name() {
                let store = commercex::media::MediaStore::from_config(&super::s3_config(), std::path::Path::new("."));
                super::$name(store.expect("an S3 media store")).await;
            })*
        }
    };
}

media_contract!(
    images_are_read_back_as_stored,
    names_follow_the_content,
    only_images_are_stored,
    unknown_names_find_nothing
);
