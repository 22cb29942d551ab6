//! Account data for access control, read from the store's account handle.

use stowage_auth::authority::{Directory, DirectoryError};
use stowage_core::{ProjectRecord, RobotRecord, Role, UserRecord};
use stowage_store::{AccountStore, StoreError};

/// Account data for access control, read from the store.
#[derive(Debug)]
pub struct StoreDirectory(pub AccountStore);

fn dir_err(e: StoreError) -> DirectoryError {
    DirectoryError(e.to_string())
}

impl Directory for StoreDirectory {
    fn user(&self, name: &str) -> Result<Option<UserRecord>, DirectoryError> {
        self.0.user(name).map_err(dir_err)
    }
    fn robot(&self, account: &str) -> Result<Option<RobotRecord>, DirectoryError> {
        self.0.robot(account).map_err(dir_err)
    }
    fn grant(&self, user: &str, project: &str) -> Result<Option<Role>, DirectoryError> {
        self.0.grant(user, project).map_err(dir_err)
    }
    fn grants_of(&self, user: &str) -> Result<Vec<(String, Role)>, DirectoryError> {
        self.0.grants_of(user).map_err(dir_err)
    }
    fn project(&self, name: &str) -> Result<Option<ProjectRecord>, DirectoryError> {
        self.0.project(name).map_err(dir_err)
    }
}
