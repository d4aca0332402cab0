//! AWS clients (S3, KMS) from explicit settings: an endpoint for S3-compatible servers and
//! emulators, a region, and optional static credentials (otherwise the default AWS chain).

use aws_config::{BehaviorVersion, Region};

/// Where and as whom to reach an AWS service.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

async fn sdk_config(s: &AwsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(
        s.region.clone().unwrap_or_else(|| "us-east-1".into()),
    ));
    if let Some(e) = &s.endpoint {
        loader = loader.endpoint_url(e);
    }
    if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id,
            secret,
            None,
            None,
            "clinic-config",
        ));
    }
    loader.load().await
}

/// An S3 client; `path_style` for servers that do not route virtual-host bucket names.
pub async fn s3_client(s: &AwsSettings, path_style: bool) -> aws_sdk_s3::Client {
    let conf = sdk_config(s).await;
    let c = aws_sdk_s3::config::Builder::from(&conf)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(c)
}

/// A KMS client.
pub async fn kms_client(s: &AwsSettings) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config(s).await)
}
