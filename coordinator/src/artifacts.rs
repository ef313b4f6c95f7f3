//! The artifact store: every blob — a tensor, a dataset, a TorchScript program — stored
//! once under its sha256 (`blobs/<sha256>`), whatever refers to it, in a local directory
//! or any S3-compatible bucket (one code path: `object_store`). A model's weights file is
//! assembled from its manifest (the tensors' names, dtypes, shapes and hashes) as it is
//! streamed out, and every blob is checked against its hash as it is read (and a model's
//! float tensors, once, for being finite). Workers reach it only through `ArtifactService`.
//!
//! An upload declares its size first: one larger than `max_blob_bytes` is refused before
//! any byte is stored, and one that sends more than it declared is cut at the chunk that
//! passes it. Garbage collection also removes what uploads that never finished left
//! behind, which no listing of objects shows: a coordinator killed mid-upload leaves a
//! staging file `blobs/<sha256>#<n>` in a directory, an incomplete multipart upload in a
//! bucket.
//!
//! Never touches the database: what is referenced, and what garbage collection may
//! delete, is the caller's to say.

use crate::error::{Error, Result, StartupError};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use heirloom_core::TensorInfo;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

/// The most bytes one read from the store, and one streamed message, carries: well under
/// the gRPC message limit, large enough that per-message costs vanish.
pub const CHUNK_BYTES: usize = 2 << 20;
/// Reads kept in flight while streaming, so the store and the network overlap.
const READ_AHEAD: usize = 4;
/// Existence checks kept in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 16;
/// Uploads up to this size are stored with one put; larger ones in parts.
const SINGLE_PUT_BYTES: usize = 16 << 20;
/// Parts of a multipart upload (S3 needs at least 5 MiB for every part but the last).
const PART_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// Where unfinished uploads leave what the store's listing does not show.
    staging: Staging,
    /// The largest blob an upload may declare.
    max_blob_bytes: u64,
}

/// What a garbage collection deleted (or, in a dry run, would delete) and kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub deleted_blobs: u64,
    pub deleted_bytes: u64,
    pub kept_blobs: u64,
    pub deleted_staging_files: u64,
    pub deleted_staging_bytes: u64,
}

/// One tensor of a model's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub info: TensorInfo,
    pub sha256: String,
}

/// A stream of (offset, bytes) pieces of a blob or of an exported file.
pub type Chunks = BoxStream<'static, Result<(u64, Bytes)>>;

/// Refuses anything but a lowercase hex sha256, the only names blobs have.
pub fn check_sha256(field: &str, sha256: &str) -> Result<()> {
    Ok(heirloom_core::limits::check_sha256(field, sha256)?)
}

fn blob_key(sha256: &str) -> Path {
    Path::from(format!("blobs/{sha256}"))
}

fn store_error(err: object_store::Error) -> Error {
    match err {
        object_store::Error::NotFound { path, .. } => {
            Error::NotFound(format!("no blob {path} is stored"))
        }
        other => Error::Storage(other.to_string()),
    }
}

impl Artifacts {
    /// Opens the store at `location`: a directory (created if need be), or
    /// `s3://bucket[/prefix]` with the endpoint, region and credentials taken from the
    /// usual `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …).
    pub fn open(location: &str) -> Result<Self, StartupError> {
        let unusable = |err: &dyn std::fmt::Display| {
            StartupError::Setting(format!("--artifacts {location}: {err}"))
        };
        let (store, staging): (Arc<dyn ObjectStore>, Staging) = match location.strip_prefix("s3://")
        {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|err| unusable(&err))?;
                let prefix = prefix.trim_matches('/');
                let staging =
                    Staging::Bucket(Bucket::new(s3.clone(), prefix).map_err(|err| unusable(&err))?);
                if prefix.is_empty() {
                    (Arc::new(s3), staging)
                } else {
                    let store = object_store::prefix::PrefixStore::new(s3, prefix);
                    (Arc::new(store), staging)
                }
            }
            None => {
                std::fs::create_dir_all(location).map_err(|err| unusable(&err))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(location)
                    .map_err(|err| unusable(&err))?;
                (Arc::new(store), Staging::Directory(PathBuf::from(location)))
            }
        };
        Ok(Self {
            store,
            staging,
            max_blob_bytes: heirloom_core::limits::MAX_DATASET_BYTES,
        })
    }

    /// The same store, taking uploads of blobs up to `max_blob_bytes`.
    pub fn with_max_blob_bytes(self, max_blob_bytes: u64) -> Self {
        Self {
            max_blob_bytes,
            ..self
        }
    }

    /// The largest blob an upload may declare.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// The store itself, for tests that need to reach under the API (to corrupt a blob).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Stores `bytes`, whose sha256 the caller computed, unless they are stored already.
    pub async fn put(&self, sha256: &str, bytes: Bytes) -> Result<()> {
        check_sha256("sha256", sha256)?;
        if self.len(sha256).await?.is_some() {
            return Ok(()); // content-addressed: the same name holds the same bytes
        }
        self.store
            .put(&blob_key(sha256), PutPayload::from_bytes(bytes))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// A whole blob, checked against its hash: a corrupted blob is never served.
    pub async fn read(&self, sha256: &str) -> Result<Bytes> {
        check_sha256("sha256", sha256)?;
        let bytes = self
            .store
            .get(&blob_key(sha256))
            .await
            .map_err(store_error)?
            .bytes()
            .await
            .map_err(store_error)?;
        if heirloom_core::sha256_hex(&bytes) != sha256 {
            return Err(corrupted(sha256));
        }
        Ok(bytes)
    }

    /// The stored blob's length, if it is stored.
    pub async fn len(&self, sha256: &str) -> Result<Option<u64>> {
        match self.store.head(&blob_key(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(store_error(err)),
        }
    }

    /// The stored lengths of many blobs, in order, looked up concurrently: on S3 each
    /// lookup is a round trip, and a model has hundreds of tensors.
    pub async fn lens(&self, hashes: &[String]) -> Result<Vec<Option<u64>>> {
        let lookups: Vec<_> = hashes
            .iter()
            .map(|sha256| {
                let artifacts = self.clone();
                let sha256 = sha256.clone();
                async move { artifacts.len(&sha256).await }
            })
            .collect();
        stream::iter(lookups)
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Checks that every tensor of a manifest is stored with the size its dtype and shape
    /// need (its bytes matched its hash when they were stored).
    pub async fn check_stored(&self, field: &str, manifest: &[ManifestEntry]) -> Result<()> {
        for entry in manifest {
            check_sha256(
                &format!("{field}: tensor {}", entry.info.name),
                &entry.sha256,
            )?;
        }
        let hashes: Vec<String> = manifest.iter().map(|e| e.sha256.clone()).collect();
        for (entry, stored) in manifest.iter().zip(self.lens(&hashes).await?) {
            let info = &entry.info;
            let Some(stored) = stored else {
                return Err(Error::InvalidArgument(format!(
                    "{field}: tensor {}: blob {} was never uploaded",
                    info.name, entry.sha256
                )));
            };
            let expected = tensor_bytes(info);
            if stored != expected {
                return Err(Error::InvalidArgument(format!(
                    "{field}: tensor {}: blob {} holds {stored} bytes, but {} {:?} takes {expected}",
                    info.name, entry.sha256, info.dtype, info.shape
                )));
            }
        }
        Ok(())
    }

    /// Streams a blob from `offset`, in chunks of at most CHUNK_BYTES; returns its
    /// length too. The whole blob is hashed on the way (from its start, even when the
    /// stream starts later) and the stream ends in `DataLoss` if it no longer matches.
    pub async fn download(&self, sha256: &str, offset: u64) -> Result<(u64, Chunks)> {
        check_sha256("sha256", sha256)?;
        let Some(total) = self.len(sha256).await? else {
            return Err(Error::NotFound(format!("no blob {sha256} is stored")));
        };
        if offset > total {
            return Err(Error::InvalidArgument(format!(
                "offset: {offset} is past the end of the {total}-byte blob"
            )));
        }
        Ok((total, self.checked_chunks(sha256, total, 0, offset)))
    }

    /// The safetensors file of a manifest in canonical form — the same manifest always
    /// gives the same bytes, whoever wrote the tensors — streamed from `offset`; returns
    /// its length too. Every tensor that is sent is checked against its hash.
    pub fn export(&self, manifest: &[ManifestEntry], offset: u64) -> Result<(u64, Chunks)> {
        let header = Bytes::from(canonical_header(manifest)?);
        let order = canonical_order(manifest);
        let total = header.len() as u64 + order.iter().map(|e| tensor_bytes(&e.info)).sum::<u64>();
        if offset > total {
            return Err(Error::InvalidArgument(format!(
                "offset: {offset} is past the end of the {total}-byte file"
            )));
        }
        let mut parts: Vec<Chunks> = Vec::new();
        let header_len = header.len() as u64;
        if offset < header_len {
            parts.push(stream::iter([Ok((offset, header.slice(offset as usize..)))]).boxed());
        }
        let mut start = header_len;
        for entry in order {
            let len = tensor_bytes(&entry.info);
            if offset < start + len {
                parts.push(self.checked_chunks(&entry.sha256, len, start, offset));
            }
            start += len;
        }
        Ok((total, stream::iter(parts).flatten().boxed()))
    }

    /// The canonical safetensors file's sha256 and length, computed by streaming it; on
    /// the way, each float tensor is checked to be finite (`heirloom_core::check_finite`),
    /// so the one read of every byte that a model needs before it is stored also keeps
    /// NaN and ±inf out. A tensor that is not finite is an `InvalidArgument` naming it
    /// under `field`.
    pub async fn canonical_digest(
        &self,
        field: &str,
        manifest: &[ManifestEntry],
    ) -> Result<(String, u64)> {
        let header = canonical_header(manifest)?;
        let mut hasher = Sha256::new();
        hasher.update(&header);
        let mut total = header.len() as u64;
        // The order `export` streams the file in.
        for entry in canonical_order(manifest) {
            let len = tensor_bytes(&entry.info);
            let mut chunks = self.checked_chunks(&entry.sha256, len, 0, 0);
            while let Some((at, data)) = chunks.try_next().await? {
                // Chunks start at multiples of CHUNK_BYTES: whole elements.
                heirloom_core::check_finite_part(
                    field,
                    &entry.info.name,
                    &entry.info.dtype,
                    &data,
                    at as usize,
                )?;
                hasher.update(&data);
            }
            total += len;
        }
        Ok((hex::encode(hasher.finalize()), total))
    }

    /// The blob `sha256` of `len` bytes, placed at `base` in a larger file, as chunks from
    /// file offset `from`: reads ahead, hashes every byte of the blob, and ends in
    /// `DataLoss` when the hash does not match.
    fn checked_chunks(&self, sha256: &str, len: u64, base: u64, from: u64) -> Chunks {
        let store = self.store.clone();
        let key = blob_key(sha256);
        let sha256 = sha256.to_string();
        let reads = (0..len.max(1)).step_by(CHUNK_BYTES).map(move |start| {
            let (store, key) = (store.clone(), key.clone());
            let end = (start + CHUNK_BYTES as u64).min(len);
            async move {
                let data = if start == end {
                    Bytes::new()
                } else {
                    store
                        .get_range(&key, start..end)
                        .await
                        .map_err(store_error)?
                };
                Ok::<_, Error>((start, data))
            }
        });
        let hashed = stream::iter(reads).buffered(READ_AHEAD).scan(
            Some(Sha256::new()),
            move |hasher, read| {
                let item = match read {
                    Err(err) => Some(Err(err)),
                    Ok((start, data)) => {
                        let hasher_ref = hasher.as_mut().expect("the stream ends at an error");
                        hasher_ref.update(&data);
                        let last = start + data.len() as u64 >= len;
                        if last && hex::encode(hasher.take().expect("one end").finalize()) != sha256
                        {
                            Some(Err(corrupted(&sha256)))
                        } else {
                            Some(Ok((base + start, data)))
                        }
                    }
                };
                std::future::ready(item)
            },
        );
        // Only what lies at or past `from` is sent; what lies before was hashed only.
        hashed
            .try_filter_map(move |(at, data)| {
                let end = at + data.len() as u64;
                let piece = if at >= from {
                    Some((at, data))
                } else if end <= from {
                    None
                } else {
                    Some((from, data.slice((from - at) as usize..)))
                };
                std::future::ready(Ok(piece))
            })
            .boxed()
    }

    /// Starts receiving a blob that must hash to `sha256` and that declares `total_bytes`:
    /// refused, before anything is stored, if that is more than the store takes.
    pub fn begin_upload(&self, sha256: &str, total_bytes: u64) -> Result<Upload> {
        check_sha256("sha256", sha256)?;
        if total_bytes > self.max_blob_bytes {
            return Err(Error::InvalidArgument(format!(
                "blob {sha256} declares {total_bytes} bytes ({}); the coordinator takes blobs \
                 of at most {} bytes ({}, --max-blob-bytes); nothing was stored",
                heirloom_client::display::bytes(total_bytes),
                self.max_blob_bytes,
                heirloom_client::display::bytes(self.max_blob_bytes),
            )));
        }
        Ok(Upload {
            store: self.store.clone(),
            sha256: sha256.to_string(),
            total_bytes,
            hasher: Sha256::new(),
            written: 0,
            pending: Pending::Buffered(Vec::new()),
        })
    }

    /// Deletes every stored blob that `referenced` lacks and that is older than
    /// `min_age`, and what every unfinished upload older than that left behind.
    pub async fn collect_garbage(
        &self,
        referenced: &HashSet<String>,
        min_age: std::time::Duration,
        dry_run: bool,
    ) -> Result<Collected> {
        let mut collected = self.staging.collect(min_age, dry_run).await?;
        let (mut deleted, mut bytes, mut kept) = (0, 0, 0);
        let now = chrono::Utc::now();
        let mut listing = self.store.list(Some(&Path::from("blobs")));
        while let Some(meta) = listing.try_next().await.map_err(store_error)? {
            let sha256 = meta.location.filename().unwrap_or_default();
            let age = (now - meta.last_modified).to_std().unwrap_or_default();
            if referenced.contains(sha256) || age < min_age {
                kept += 1;
                continue;
            }
            if !dry_run {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(store_error(err)),
                }
            }
            deleted += 1;
            bytes += meta.size;
        }
        collected.deleted_blobs = deleted;
        collected.deleted_bytes = bytes;
        collected.kept_blobs = kept;
        Ok(collected)
    }
}

/// Where a store's unfinished uploads leave what its listing does not show.
#[derive(Debug, Clone)]
enum Staging {
    /// A directory: staging files `blobs/<sha256>#<n>` beside the blobs, written as the
    /// upload goes.
    Directory(PathBuf),
    /// A bucket: incomplete multipart uploads of `blobs/<sha256>`.
    Bucket(Bucket),
}

impl Staging {
    /// Deletes (unless `dry_run`) what uploads older than `min_age` left: for a staging
    /// file, since its last write; for a multipart upload, since it began.
    async fn collect(&self, min_age: std::time::Duration, dry_run: bool) -> Result<Collected> {
        let (files, bytes) = match self {
            Staging::Directory(directory) => {
                let blobs = directory.join("blobs");
                tokio::task::spawn_blocking(move || staging_files(&blobs, min_age, dry_run))
                    .await
                    .map_err(|err| Error::Internal(format!("collecting staging files: {err}")))??
            }
            Staging::Bucket(bucket) => bucket.collect(min_age, dry_run).await?,
        };
        Ok(Collected {
            deleted_staging_files: files,
            deleted_staging_bytes: bytes,
            ..Collected::default()
        })
    }
}

/// Deletes (unless `dry_run`) the staging files in `blobs` last written longer ago than
/// `min_age`; returns how many there were and their bytes.
fn staging_files(
    blobs: &std::path::Path,
    min_age: std::time::Duration,
    dry_run: bool,
) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(err) => return Err(Error::Io(err)),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(is_staging_name) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Finished (renamed into place) or aborted since it was listed.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::Io(err)),
        };
        let age = meta.modified()?.elapsed().unwrap_or_default();
        if !meta.is_file() || age < min_age {
            continue;
        }
        if !dry_run {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::Io(err)),
            }
        }
        files += 1;
        bytes += meta.len();
    }
    Ok((files, bytes))
}

/// `<sha256>#<digits>`: how `object_store`'s directory store names an upload in progress.
fn is_staging_name(name: &str) -> bool {
    name.split_once('#').is_some_and(|(sha256, suffix)| {
        heirloom_core::limits::is_sha256(sha256)
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
    })
}

/// A bucket's multipart uploads, which `object_store` can abort but not list: listed
/// with S3's ListMultipartUploads and ListParts, signed by the store's own credentials.
#[derive(Debug, Clone)]
struct Bucket {
    s3: object_store::aws::AmazonS3,
    /// The store's prefix in the bucket, with its trailing `/` (or empty).
    prefix: String,
    http: object_store::client::HttpClient,
}

/// One incomplete multipart upload: its key in the bucket, its id, when it began.
struct MultipartUpload {
    key: String,
    id: String,
    initiated: chrono::DateTime<chrono::Utc>,
}

impl Bucket {
    fn new(s3: object_store::aws::AmazonS3, prefix: &str) -> object_store::Result<Bucket> {
        use object_store::client::HttpConnector;
        // The store's own client settings are not public; plain HTTP is allowed the same
        // way (`AWS_ALLOW_HTTP`, for a local test server).
        let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|value| value == "true");
        let options = object_store::ClientOptions::new().with_allow_http(allow_http);
        Ok(Bucket {
            s3,
            prefix: match prefix {
                "" => String::new(),
                prefix => format!("{prefix}/"),
            },
            http: object_store::client::ReqwestConnector::default().connect(&options)?,
        })
    }

    async fn collect(&self, min_age: std::time::Duration, dry_run: bool) -> Result<(u64, u64)> {
        use object_store::multipart::MultipartStore;
        let (mut files, mut bytes) = (0, 0);
        let now = chrono::Utc::now();
        for upload in self.uploads().await? {
            let age = (now - upload.initiated).to_std().unwrap_or_default();
            let ours = upload
                .key
                .strip_prefix(&format!("{}blobs/", self.prefix))
                .is_some_and(heirloom_core::limits::is_sha256);
            if !ours || age < min_age {
                continue;
            }
            let size = self.parts_bytes(&upload).await?;
            if !dry_run {
                match self
                    .s3
                    .abort_multipart(&Path::from(upload.key.as_str()), &upload.id)
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(store_error(err)),
                }
            }
            files += 1;
            bytes += size;
        }
        Ok((files, bytes))
    }

    /// Every incomplete multipart upload under the store's `blobs/`.
    async fn uploads(&self) -> Result<Vec<MultipartUpload>> {
        let mut uploads = Vec::new();
        let mut after: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), format!("{}blobs/", self.prefix)),
            ];
            if let Some((key, id)) = after.take() {
                query.push(("key-marker".into(), key));
                query.push(("upload-id-marker".into(), id));
            }
            let listing = self.get(&Path::default(), query).await?;
            for upload in xml_elements(&listing, "Upload") {
                let field = |name| xml_element(upload, name).unwrap_or_default();
                let initiated = chrono::DateTime::parse_from_rfc3339(&field("Initiated"))
                    .map_err(|err| Error::Storage(format!("a multipart upload's start: {err}")))?;
                uploads.push(MultipartUpload {
                    key: field("Key"),
                    id: field("UploadId"),
                    initiated: initiated.with_timezone(&chrono::Utc),
                });
            }
            if xml_element(&listing, "IsTruncated").as_deref() != Some("true") {
                return Ok(uploads);
            }
            let next = |name| xml_element(&listing, name).unwrap_or_default();
            after = Some((next("NextKeyMarker"), next("NextUploadIdMarker")));
        }
    }

    /// The bytes an incomplete multipart upload's parts hold.
    async fn parts_bytes(&self, upload: &MultipartUpload) -> Result<u64> {
        let mut bytes = 0;
        let mut after = None;
        loop {
            let mut query = vec![("uploadId".to_string(), upload.id.clone())];
            if let Some(part) = after.take() {
                query.push(("part-number-marker".into(), part));
            }
            let listing = self.get(&Path::from(upload.key.as_str()), query).await?;
            for part in xml_elements(&listing, "Part") {
                bytes += xml_element(part, "Size")
                    .and_then(|size| size.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if xml_element(&listing, "IsTruncated").as_deref() != Some("true") {
                return Ok(bytes);
            }
            after = xml_element(&listing, "NextPartNumberMarker");
        }
    }

    /// A signed GET of `path` (a key, or the bucket itself) with `query`: the answer's body.
    async fn get(&self, path: &Path, query: Vec<(String, String)>) -> Result<String> {
        use object_store::signer::{Method, SignedUrlOptions, Signer};
        let storage = |err: &dyn std::fmt::Display| Error::Storage(err.to_string());
        let options = SignedUrlOptions::default().with_query(query);
        let url = self
            .s3
            .signed_url_opts(
                Method::GET,
                path,
                std::time::Duration::from_secs(60),
                &options,
            )
            .await
            .map_err(store_error)?;
        let request = tonic::codegen::http::Request::get(url.as_str())
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|err| storage(&err))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|err| storage(&err))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|err| storage(&err))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(Error::Storage(format!("{status} listing uploads: {body}")));
        }
        Ok(body)
    }
}

/// The contents of each `<name>` element in `xml` (S3's answers: no attributes on these
/// elements, no nesting of one in itself).
fn xml_elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// The text of the first `<name>` element in `xml`, its entities decoded.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let text = xml_elements(xml, name).into_iter().next()?;
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn corrupted(sha256: &str) -> Error {
    Error::DataLoss(format!(
        "the stored blob {sha256} no longer matches its hash"
    ))
}

/// How many bytes a tensor of this dtype and shape takes.
pub fn tensor_bytes(info: &TensorInfo) -> u64 {
    // Shapes are bounded at the edge (limits::check_tensor); saturate all the same.
    info.byte_len().unwrap_or(u64::MAX)
}

fn dtype(info: &TensorInfo) -> Result<safetensors::Dtype> {
    match info.dtype.as_str() {
        "f32" => Ok(safetensors::Dtype::F32),
        "bf16" => Ok(safetensors::Dtype::BF16),
        "f16" => Ok(safetensors::Dtype::F16),
        "i64" => Ok(safetensors::Dtype::I64),
        other => Err(Error::Internal(format!("unexpected dtype {other}"))),
    }
}

/// The order `safetensors::serialize` lays tensors out in: by descending dtype, then name.
fn canonical_order(manifest: &[ManifestEntry]) -> Vec<&ManifestEntry> {
    let mut order: Vec<&ManifestEntry> = manifest.iter().collect();
    order.sort_by(|a, b| {
        let (da, db) = (dtype(&a.info).ok(), dtype(&b.info).ok());
        db.cmp(&da).then(a.info.name.cmp(&b.info.name))
    });
    order
}

/// The header `safetensors::serialize` would write for these tensors: its length as a
/// little-endian u64, then the JSON padded with spaces to a multiple of 8 bytes.
fn canonical_header(manifest: &[ManifestEntry]) -> Result<Vec<u8>> {
    let mut offset = 0;
    let mut tensors = Vec::with_capacity(manifest.len());
    for entry in canonical_order(manifest) {
        let len = tensor_bytes(&entry.info) as usize;
        tensors.push((
            entry.info.name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: dtype(&entry.info)?,
                shape: entry.info.shape.clone(),
                data_offsets: (offset, offset + len),
            },
        ));
        offset += len;
    }
    let metadata = safetensors::tensor::Metadata::new(None, tensors)
        .map_err(|err| Error::Internal(format!("safetensors header: {err}")))?;
    let mut json = serde_json::to_vec(&metadata)
        .map_err(|err| Error::Internal(format!("safetensors header: {err}")))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    Ok(header)
}

/// A blob being received: hashed as it arrives, and stored only when its hash matches.
pub struct Upload {
    store: Arc<dyn ObjectStore>,
    sha256: String,
    /// The size the upload declared: no byte past it is taken.
    total_bytes: u64,
    hasher: Sha256,
    written: u64,
    pending: Pending,
}

enum Pending {
    /// Small so far: kept in memory, stored with one put.
    Buffered(Vec<Bytes>),
    /// Large: streamed to the store in parts, which it shows nobody until `finish`.
    Parts(WriteMultipart),
}

impl Upload {
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How many bytes were received so far: the next chunk's offset.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The size the upload declared.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Takes the next bytes; refuses them, storing none, if they pass the declared size.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let arrived = self.written + data.len() as u64;
        if arrived > self.total_bytes {
            return Err(Error::InvalidArgument(format!(
                "blob {}: {arrived} bytes arrived, more than the {} it declared; the upload \
                 is cut and nothing was stored",
                self.sha256, self.total_bytes
            )));
        }
        self.hasher.update(&data);
        self.written += data.len() as u64;
        match &mut self.pending {
            Pending::Buffered(chunks) => {
                chunks.push(data);
                if self.written as usize > SINGLE_PUT_BYTES {
                    let upload = self
                        .store
                        .put_multipart(&blob_key(&self.sha256))
                        .await
                        .map_err(store_error)?;
                    let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    for chunk in std::mem::take(chunks) {
                        parts.put(chunk);
                    }
                    self.pending = Pending::Parts(parts);
                }
            }
            Pending::Parts(parts) => {
                parts
                    .wait_for_capacity(READ_AHEAD)
                    .await
                    .map_err(store_error)?;
                parts.put(data);
            }
        }
        Ok(())
    }

    /// Stores the blob if its bytes hash to its name; otherwise refuses, and nothing
    /// corrupted is ever stored.
    pub async fn finish(self) -> Result<()> {
        if self.written != self.total_bytes {
            let message = format!(
                "blob {}: its last chunk ends at {} bytes, not the {} it declared; nothing \
                 was stored",
                self.sha256, self.written, self.total_bytes
            );
            self.abort().await;
            return Err(Error::InvalidArgument(message));
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.sha256 {
            if let Pending::Parts(parts) = self.pending {
                let _ = parts.abort().await;
            }
            return Err(Error::InvalidArgument(format!(
                "blob {}: the uploaded bytes hash to {actual}; nothing was stored",
                self.sha256
            )));
        }
        match self.pending {
            Pending::Buffered(chunks) => {
                self.store
                    .put(&blob_key(&self.sha256), PutPayload::from_iter(chunks))
                    .await
                    .map_err(store_error)?;
            }
            Pending::Parts(parts) => {
                parts.finish().await.map_err(store_error)?;
            }
        }
        Ok(())
    }

    /// Gives up on the blob: nothing of it is stored.
    pub async fn abort(self) {
        if let Pending::Parts(parts) = self.pending {
            let _ = parts.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn entry(name: &str, dtype: &str, shape: Vec<usize>, data: &[u8]) -> ManifestEntry {
        ManifestEntry {
            info: TensorInfo {
                name: name.into(),
                dtype: dtype.into(),
                shape,
            },
            sha256: heirloom_core::sha256_hex(data),
        }
    }

    #[tokio::test]
    async fn exports_are_byte_for_byte_what_safetensors_writes_and_resume_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        let weight: Vec<u8> = (0..24u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let counter: Vec<u8> = 7i64.to_le_bytes().to_vec();
        let bias: Vec<u8> = (0..3u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let manifest = vec![
            entry("b.weight", "f32", vec![4, 6], &weight),
            entry("a.num_batches_tracked", "i64", vec![], &counter),
            entry("a.bias", "f32", vec![3], &bias),
        ];
        for (e, data) in manifest.iter().zip([&weight, &counter, &bias]) {
            artifacts
                .put(&e.sha256, Bytes::from(data.clone()))
                .await
                .unwrap();
        }
        fn view(dtype: safetensors::Dtype, shape: Vec<usize>, data: &[u8]) -> TensorView<'_> {
            TensorView::new(dtype, shape, data).unwrap()
        }
        let expected = safetensors::serialize(
            vec![
                (
                    "b.weight",
                    view(safetensors::Dtype::F32, vec![4, 6], &weight),
                ),
                (
                    "a.num_batches_tracked",
                    view(safetensors::Dtype::I64, vec![], &counter),
                ),
                ("a.bias", view(safetensors::Dtype::F32, vec![3], &bias)),
            ],
            None,
        )
        .unwrap();
        for offset in 0..=expected.len() as u64 {
            let (total, chunks) = artifacts.export(&manifest, offset).unwrap();
            assert_eq!(total, expected.len() as u64);
            let pieces: Vec<(u64, Bytes)> = chunks.try_collect().await.unwrap();
            let mut file = Vec::new();
            for (at, data) in pieces {
                assert_eq!(at, offset + file.len() as u64, "pieces are contiguous");
                file.extend_from_slice(&data);
            }
            assert_eq!(file, expected[offset as usize..], "from offset {offset}");
        }
        let (sha256, len) = artifacts
            .canonical_digest("weights", &manifest)
            .await
            .unwrap();
        assert_eq!(
            (sha256, len),
            (heirloom_core::sha256_hex(&expected), expected.len() as u64)
        );
    }

    #[test]
    fn staging_names_and_s3_listings_are_read() {
        let sha256 = heirloom_core::sha256_hex(b"x");
        assert!(is_staging_name(&format!("{sha256}#1")));
        assert!(is_staging_name(&format!("{sha256}#12")));
        for other in [
            sha256.clone(),
            format!("{sha256}#"),
            format!("{sha256}#1a"),
            "notahash#1".into(),
            format!("{}#1", &sha256[1..]),
        ] {
            assert!(!is_staging_name(&other), "{other}");
        }
        let listing = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>\
            <Upload><Key>p/blobs/a</Key><UploadId>x&amp;y</UploadId></Upload>\
            <Upload><Key>p/blobs/b</Key><UploadId>z</UploadId></Upload>\
            <NextKeyMarker>p/blobs/b</NextKeyMarker></ListMultipartUploadsResult>";
        let uploads = xml_elements(listing, "Upload");
        assert_eq!(uploads.len(), 2);
        assert_eq!(xml_element(uploads[0], "UploadId").as_deref(), Some("x&y"));
        assert_eq!(xml_element(uploads[1], "Key").as_deref(), Some("p/blobs/b"));
        assert_eq!(xml_element(listing, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(xml_element(listing, "Size"), None);
    }

    #[tokio::test]
    async fn the_digest_refuses_a_tensor_that_is_not_finite_naming_its_element() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::open(dir.path().to_str().unwrap()).unwrap();
        // Three chunks of floats; the NaN lies in the second, the counter's bits are all
        // set (NaN, were it a float).
        let count = CHUNK_BYTES / 4 * 2 + 10;
        let bad = CHUNK_BYTES / 4 + 3;
        let mut values = vec![0.5f32; count];
        values[bad] = f32::NAN;
        let weight: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let counter = vec![0xFF; 8];
        let manifest = vec![
            entry("a.num_batches_tracked", "i64", vec![], &counter),
            entry("b.weight", "f32", vec![count], &weight),
        ];
        for (e, data) in manifest.iter().zip([&counter, &weight]) {
            artifacts
                .put(&e.sha256, Bytes::from(data.clone()))
                .await
                .unwrap();
        }
        let err = artifacts
            .canonical_digest("output.tensors", &manifest)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(message) if message == &format!(
                "output.tensors: tensor b.weight holds NaN at element {bad}: \
                 a model with non-finite weights is never stored"
            )),
            "{err}"
        );
        let finite_bytes: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let finite = entry("b.weight", "f32", vec![2], &finite_bytes);
        artifacts
            .put(&finite.sha256, Bytes::from(finite_bytes))
            .await
            .unwrap();
        artifacts
            .canonical_digest("output.tensors", &[manifest[0].clone(), finite])
            .await
            .expect("integers are never scanned, and finite floats pass");
    }
}
