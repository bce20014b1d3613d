//! The `Access` service: operators' tokens, agents, identity providers, secrets and session
//! keys. Tokens are generated here and returned once; only their hashes are proposed. Secret
//! values are sealed here, with this node's key-encryption key, before they are proposed.

use std::collections::BTreeMap;

use joch_proto::admin as pb;
use joch_proto::admin::access_server::Access;
use joch_raft_store::model::access::{Role, Sealed};
use joch_raft_store::model::validate::check_name;
use joch_raft_store::Command;
use tonic::{Request, Response, Status};

use super::convert::stamp;
use super::{actor, invalid, observe, operator, AdminApi};
use crate::auth::token;

impl AdminApi {
    /// The command setting secret `name` to `data`, sealed here under this node's key-encryption
    /// key (only ciphertext enters the log). An error names the key, never a value.
    pub(super) fn seal_secret(&self, name: &str, data: &BTreeMap<String, String>) -> Result<Command, Status> {
        check_name("name", name).map_err(|e| invalid(&e.field, e.message))?;
        if data.is_empty() {
            return Err(invalid("data", "a secret needs at least one key"));
        }
        let mut sealed = BTreeMap::new();
        for (k, v) in data {
            if !crate::resource::manifest::valid_secret_key(k) {
                return Err(invalid("data", format!("key {k:?}: letters, digits, '-', '_' and '.' only")));
            }
            let s = self
                .keyring
                .seal(name, k, v.as_bytes())
                .map_err(|e| Status::failed_precondition(format!("node {}: {e}", self.cluster.id)))?;
            sealed.insert(k.clone(), s);
        }
        Ok(Command::SetSecret { name: name.to_string(), data: sealed })
    }
}

#[tonic::async_trait]
impl Access for AdminApi {
    async fn who_am_i(&self, req: Request<pb::Empty>) -> Result<Response<pb::Operator>, Status> {
        let op = operator(&req)?;
        observe("WhoAmI", async { Ok(pb::Operator { name: op.name, role: op.role.as_str().into() }) }).await
    }

    async fn create_admin_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("CreateAdminToken", async {
            check_name("name", &r.name).map_err(|e| invalid(&e.field, e.message))?;
            let role = Role::parse(&r.role)
                .ok_or_else(|| invalid("role", format!("{:?}: expected viewer, operator or admin", r.role)))?;
            let t = token::generate(token::ADMIN_PREFIX);
            let cmd = Command::CreateAdminToken { name: r.name.clone(), role, token_sha256: token::hash(&t) };
            let write = self.write(&actor, cmd).await?;
            Ok(pb::TokenReply { name: r.name, token: t, write: Some(write) })
        })
        .await
    }

    async fn list_admin_tokens(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::TokenList>, Status> {
        let r = req.into_inner();
        observe("ListAdminTokens", async {
            let st = self.read(r.stale).await?;
            let tokens = st
                .registry
                .access
                .admin_tokens
                .values()
                .map(|t| pb::TokenInfo {
                    name: t.name.clone(),
                    role: t.role.as_str().into(),
                    created: Some(stamp(&t.created)),
                })
                .collect();
            Ok(pb::TokenList { tokens })
        })
        .await
    }

    async fn revoke_admin_token(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("RevokeAdminToken", self.write(&actor, Command::RevokeAdminToken { name })).await
    }

    async fn create_agent(&self, req: Request<pb::CreateAgentRequest>) -> Result<Response<pb::TokenReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("CreateAgent", async {
            check_name("name", &r.name).map_err(|e| invalid(&e.field, e.message))?;
            let t = token::generate(token::AGENT_PREFIX);
            let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
            let cmd = Command::CreateAgent { name: r.name.clone(), labels, token_sha256: token::hash(&t) };
            let write = self.write(&actor, cmd).await?;
            Ok(pb::TokenReply { name: r.name, token: t, write: Some(write) })
        })
        .await
    }

    async fn list_agents(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::AgentList>, Status> {
        let r = req.into_inner();
        observe("ListAgents", async {
            let st = self.read(r.stale).await?;
            let agents = st
                .registry
                .access
                .agents
                .values()
                .map(|a| pb::AgentInfo {
                    name: a.name.clone(),
                    labels: a.labels.clone().into_iter().collect(),
                    created: Some(stamp(&a.created)),
                })
                .collect();
            Ok(pb::AgentList { agents })
        })
        .await
    }

    async fn revoke_agent(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("RevokeAgent", self.write(&actor, Command::RevokeAgent { name })).await
    }

    async fn set_idp(&self, req: Request<pb::IdpRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("SetIdp", async {
            check_name("name", &r.name).map_err(|e| invalid(&e.field, e.message))?;
            let keys = usable_keys(&r.jwks_json)?;
            if keys == 0 {
                return Err(invalid("jwks", "the key set has no key joch can use (RSA, EC or OKP public keys)"));
            }
            let name_claim = if r.name_claim.is_empty() { "sub".to_string() } else { r.name_claim };
            let cmd = Command::SetIdp {
                name: r.name,
                issuer: r.issuer,
                audience: r.audience,
                jwks_json: r.jwks_json,
                name_claim,
                label_claims: r.label_claims.into_iter().collect(),
            };
            self.write(&actor, cmd).await
        })
        .await
    }

    async fn list_idps(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::IdpList>, Status> {
        let r = req.into_inner();
        observe("ListIdps", async {
            let st = self.read(r.stale).await?;
            let idps = st
                .registry
                .access
                .idps
                .values()
                .map(|i| pb::IdpInfo {
                    name: i.name.clone(),
                    issuer: i.issuer.clone(),
                    audience: i.audience.clone(),
                    name_claim: i.name_claim.clone(),
                    label_claims: i.label_claims.clone().into_iter().collect(),
                    keys: usable_keys(&i.jwks_json).unwrap_or(0) as u32,
                    updated: Some(stamp(&i.updated)),
                })
                .collect();
            Ok(pb::IdpList { idps })
        })
        .await
    }

    async fn delete_idp(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeleteIdp", self.write(&actor, Command::DeleteIdp { name })).await
    }

    async fn set_secret(&self, req: Request<pb::SecretRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("SetSecret", async {
            let data: BTreeMap<String, String> = r.data.into_iter().collect();
            let command = self.seal_secret(&r.name, &data)?;
            self.write(&actor, command).await
        })
        .await
    }

    async fn list_secrets(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::SecretList>, Status> {
        let r = req.into_inner();
        observe("ListSecrets", async {
            let st = self.read(r.stale).await?;
            let secrets = st
                .registry
                .access
                .secrets
                .values()
                .map(|s| {
                    let mut kek_ids: Vec<String> = s.data.values().map(|v| v.kek_id.clone()).collect();
                    kek_ids.sort();
                    kek_ids.dedup();
                    pb::SecretInfo {
                        name: s.name.clone(),
                        keys: s.data.keys().cloned().collect(),
                        version: s.version,
                        updated: Some(stamp(&s.updated)),
                        kek_ids,
                    }
                })
                .collect();
            Ok(pb::SecretList { secrets })
        })
        .await
    }

    async fn delete_secret(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeleteSecret", self.write(&actor, Command::DeleteSecret { name })).await
    }

    async fn rotate_kek(&self, req: Request<pb::Empty>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        observe("RotateKek", async {
            let current = self.keyring.current_id().map(str::to_string).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "node {}: no key-encryption key (secrets.kek_file)",
                    self.cluster.id
                ))
            })?;
            let st = self.read(false).await?;
            let mut resealed = BTreeMap::new();
            for s in st.registry.access.secrets.values() {
                if s.data.values().all(|v| v.kek_id == current) {
                    continue;
                }
                let mut data: BTreeMap<String, Sealed> = BTreeMap::new();
                for (k, v) in &s.data {
                    let plain = self.keyring.open(&s.name, k, v).map_err(|e| {
                        Status::failed_precondition(format!(
                            "node {}: secret {:?} key {k:?}: {e}",
                            self.cluster.id, s.name
                        ))
                    })?;
                    let sealed = self
                        .keyring
                        .seal(&s.name, k, &plain)
                        .map_err(|e| Status::failed_precondition(format!("node {}: {e}", self.cluster.id)))?;
                    data.insert(k.clone(), sealed);
                }
                resealed.insert(s.name.clone(), (s.version, data));
            }
            self.write(&actor, Command::ResealSecrets { secrets: resealed }).await
        })
        .await
    }

    async fn rotate_session_key(&self, req: Request<pb::Empty>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        observe("RotateSessionKey", async {
            let mut key = [0u8; 32];
            rand::fill(&mut key);
            self.write(&actor, Command::AddSessionKey { key }).await
        })
        .await
    }
}

/// How many keys of a JWKS document joch can verify signatures with.
fn usable_keys(json: &str) -> Result<usize, Status> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(json).map_err(|e| invalid("jwks", format!("not a JWKS document: {e}")))?;
    Ok(set.keys.iter().filter(|k| jsonwebtoken::DecodingKey::from_jwk(k).is_ok()).count())
}
