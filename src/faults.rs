//! Named fault points. With the `fault-injection` feature, tests arm a point (`arm("before_commit:order.paid", 1)`)
//! and the next time the code passes it, it panics inside the actor's handler. Without the feature every check
//! compiles to nothing.

#[cfg(feature = "fault-injection")]
#[derive(Default)]
pub struct FaultPoints {
    armed: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    fired: std::sync::Mutex<Vec<String>>,
}

#[cfg(feature = "fault-injection")]
impl FaultPoints {
    /// Makes the next `times` passes through `point` panic.
    pub fn arm(&self, point: &str, times: u32) {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).insert(point.to_string(), times);
    }

    /// The points that fired so far, in order.
    pub fn fired(&self) -> Vec<String> {
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn check(&self, point: &str) {
        let fire = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.get_mut(point) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if fire {
            self.fired.lock().unwrap_or_else(|p| p.into_inner()).push(point.to_string());
            panic!("fault point `{point}` fired");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[derive(Default)]
pub struct FaultPoints;

#[cfg(not(feature = "fault-injection"))]
impl FaultPoints {
    #[inline(always)]
    pub fn check(&self, _point: &str) {}
}
