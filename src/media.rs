//! Product images: recognised by their content, kept in a media store, served under content-addressed names.
//!
//! The media store is an [`ObjectStore`]: a directory under the data directory by default, or any S3-compatible
//! bucket (`media.backend = "s3"`). Both are driven through the same calls here, and one contract suite
//! (`tests/contract/media.rs`) runs against each. An image's name is the hash of its bytes
//! (`products/{productId}/{sha256 prefix}.{ext}`), so a name never changes meaning and is served with a year's
//! cache lifetime; a new image gets a new name.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{Attribute, BackoffConfig, ClientOptions, ObjectStore, PutOptions, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

use crate::config::{MediaBackend, MediaConfig};

/// The image formats accepted, told apart by their first bytes (never by the name or the declared type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    fn from_extension(ext: &str) -> Option<Self> {
        [Self::Jpeg, Self::Png, Self::Webp].into_iter().find(|f| f.extension() == ext)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the image must be JPEG, PNG or WebP")]
    UnsupportedFormat,
    #[error("invalid media name")]
    InvalidName,
    #[error("media store: {0}")]
    Unavailable(#[from] object_store::Error),
}

/// An image as stored: its name relative to `/media/`, and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub format: ImageFormat,
}

impl StoredImage {
    /// The path it is served at by this API.
    pub fn url(&self) -> String {
        format!("/media/{}", self.name)
    }
}

#[derive(Clone)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
    backend: &'static str,
}

impl std::fmt::Debug for MediaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStore").field("backend", &self.backend).finish()
    }
}

impl MediaStore {
    /// The store `media` configures; a local one lives in `<data_dir>/media`.
    pub fn from_config(media: &MediaConfig, data_dir: &FsPath) -> anyhow::Result<Self> {
        match media.backend {
            MediaBackend::Local => Self::local(&data_dir.join("media")),
            MediaBackend::S3 => {
                let s3 = &media.s3;
                // Bounded, so a bucket that is unreachable fails a request with 503 within the request deadline
                // (`http.request_timeout_ms`) instead of retrying for minutes.
                let retry =
                    RetryConfig { backoff: BackoffConfig::default(), max_retries: 2, retry_timeout: S3_RETRY_TIMEOUT };
                let client = ClientOptions::new().with_connect_timeout(S3_CONNECT_TIMEOUT).with_timeout(S3_TIMEOUT);
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_retry(retry)
                    .with_client_options(client);
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint).with_allow_http(s3.endpoint.starts_with("http://"));
                }
                if !s3.access_key_id.is_empty() {
                    builder =
                        builder.with_access_key_id(&s3.access_key_id).with_secret_access_key(&s3.secret_access_key);
                }
                Ok(Self { store: Arc::new(builder.build()?), backend: "s3" })
            }
        }
    }

    /// Files under `dir` (created if missing).
    pub fn local(dir: &FsPath) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { store: Arc::new(LocalFileSystem::new_with_prefix(dir)?), backend: "local" })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether the store answers: a lookup of a name nothing is stored under must come back "not found".
    pub async fn ping(&self) -> Result<(), MediaError> {
        match self.store.head(&Path::from("ready-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `bytes` as an image of product `product_id`, if they are one. Storing the same bytes again is
    /// harmless: the name is the same.
    pub async fn put_product_image(&self, product_id: &str, bytes: Bytes) -> Result<StoredImage, MediaError> {
        let format = ImageFormat::sniff(&bytes).ok_or(MediaError::UnsupportedFormat)?;
        if !is_name_segment(product_id) {
            return Err(MediaError::InvalidName);
        }
        let hash = crate::auth::tokens::hex(&Sha256::digest(&bytes)[..16]);
        let name = format!("products/{product_id}/{hash}.{}", format.extension());
        // In a bucket the object carries its type and `inline`, so a public bucket or a CDN in front serves it as
        // the image it is, never as something a browser would sniff. Files of a local directory have no metadata;
        // this server gives them their type from the name's extension.
        let mut options = PutOptions::default();
        if self.backend == "s3" {
            options.attributes.insert(Attribute::ContentType, format.content_type().into());
            options.attributes.insert(Attribute::ContentDisposition, "inline".into());
        }
        self.store.put_opts(&Path::from(name.as_str()), PutPayload::from(bytes), options).await?;
        Ok(StoredImage { name, format })
    }

    /// The image stored as `products/{product_id}/{file}`, or `None` if there is none: opened, not read, so that
    /// serving it streams its bytes from the store as the client takes them.
    pub async fn product_image(&self, product_id: &str, file: &str) -> Result<Option<Image>, MediaError> {
        let Some((path, format)) = image_path(product_id, file) else { return Ok(None) };
        match self.store.get(&path).await {
            Ok(found) => {
                let size = found.meta.size;
                let stored_type = found.attributes.get(&Attribute::ContentType).map(|v| v.to_string());
                Ok(Some(Image { format, size, stored_type, stream: found.into_stream() }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `products/{product_id}/{file}` is stored, asked without reading it.
    pub async fn has_product_image(&self, product_id: &str, file: &str) -> Result<bool, MediaError> {
        let Some((path, _)) = image_path(product_id, file) else { return Ok(false) };
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A stored image, opened: its bytes come as the stream is read.
pub struct Image {
    pub format: ImageFormat,
    pub size: u64,
    /// The object's `Content-Type` as the store keeps it (a bucket's; a local file has none).
    pub stored_type: Option<String>,
    pub stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
}

impl Image {
    /// Reads the whole image.
    pub async fn bytes(self) -> Result<Bytes, MediaError> {
        use futures_util::TryStreamExt;
        let chunks: Vec<Bytes> = self.stream.try_collect().await?;
        Ok(chunks.concat().into())
    }
}

/// The path of `products/{product_id}/{file}` and its format, if `file` is a content-hashed image name and the id
/// holds nothing a path could be escaped with.
fn image_path(product_id: &str, file: &str) -> Option<(Path, ImageFormat)> {
    let format = file
        .split_once('.')
        .filter(|(hash, _)| hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|(_, ext)| ImageFormat::from_extension(ext))?;
    is_name_segment(product_id).then(|| (Path::from(format!("products/{product_id}/{file}")), format))
}

const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request to the bucket, an image's bytes included.
const S3_TIMEOUT: Duration = Duration::from_secs(5);
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Letters, digits, `-` and `_`: what a product id is made of, and nothing a path could be escaped with.
fn is_name_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(ImageFormat::sniff(b"\xFF\xD8\xFF\xE0rest"), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::sniff(b"\x89PNG\r\n\x1a\nrest"), Some(ImageFormat::Png));
        assert_eq!(ImageFormat::sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        for not_an_image in [&b""[..], b"GIF89a", b"<svg xmlns=", b"RIFF\x10\0\0\0WAVE", b"\x89PNG"] {
            assert_eq!(ImageFormat::sniff(not_an_image), None, "{not_an_image:?}");
        }
    }

    #[test]
    fn names_cannot_escape_the_store() {
        for bad in ["", "..", "a/b", "a.b", "a b", "%2e%2e"] {
            assert!(!is_name_segment(bad), "{bad}");
        }
        assert!(is_name_segment("0190f3c2-7e1a-7b3c-9d4e-5f6a7b8c9d0e"));
    }
}
