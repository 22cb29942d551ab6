//! Named pause points: a test arms a point, the operation stops there and says so, and goes on
//! when the test lets it. Lets a test put another operation exactly between two steps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The armed points.
#[derive(Default, Debug)]
pub(crate) struct Pauses {
    points: Mutex<HashMap<&'static str, Arc<Point>>>,
}

/// One armed point.
#[derive(Default, Debug)]
pub(crate) struct Point {
    reached: Notify,
    resume: Notify,
}

impl Point {
    /// Waits until an operation stops at the point.
    pub(crate) async fn reached(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.reached.notified())
            .await
            .expect("the operation never reached the pause point");
    }

    /// Lets the stopped operation go on.
    pub(crate) fn resume(&self) {
        self.resume.notify_one();
    }
}

impl Pauses {
    /// Arms `name`: the next operation that passes it stops there.
    pub(crate) fn arm(&self, name: &'static str) -> Arc<Point> {
        let point = Arc::new(Point::default());
        self.points
            .lock()
            .expect("pause table")
            .insert(name, point.clone());
        point
    }

    /// Called by the operation: stops here if the point is armed (once).
    pub(crate) async fn at(&self, name: &'static str) {
        let point = self.points.lock().expect("pause table").remove(name);
        if let Some(point) = point {
            point.reached.notify_one();
            point.resume.notified().await;
        }
    }
}
