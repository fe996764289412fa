//! The runtime runs its actors on its own thread, so an application that is
//! itself an actix System (or only a blocking main) can embed it too.

use sessionbus::config::Config;
use sessionbus::{Delivery, EndReason, EventKinds, LifecycleEvent, Runtime};
use sessionbus_testkit::*;

#[actix::test]
async fn inside_an_actix_system_with_an_actor_subscriber() {
    use actix::prelude::*;

    #[derive(Default)]
    struct Audit(Vec<EndReason>);
    impl Actor for Audit {
        type Context = Context<Self>;
    }
    impl Handler<LifecycleEvent> for Audit {
        type Result = ();
        fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
            if let LifecycleEvent::Ended(end) = event {
                self.0.push(end.reason);
            }
        }
    }
    #[derive(Message)]
    #[rtype(result = "Vec<EndReason>")]
    struct Seen;
    impl Handler<Seen> for Audit {
        type Result = MessageResult<Seen>;
        fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.0.clone())
        }
    }

    let rt = Runtime::start(Config::default()).await.unwrap();
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let audit = Audit::default().start();
    rt.subscribe(
        audit.clone().recipient(),
        EventKinds::ENDED,
        Delivery::Reliable,
    )
    .await
    .unwrap();
    let session = rt.open("actix-app").await.unwrap();
    session.allocate(MIB).await.unwrap();
    session.close().await.unwrap();
    assert_eq!(
        rt.gpu_counters().expect("the runtime's own wgpu pool"),
        baseline
    );
    let report = rt.shutdown().await;
    assert_eq!(report.gpu_after.expect("wgpu counters"), baseline);
    assert_eq!(audit.send(Seen).await.unwrap(), vec![EndReason::Closed]);
}

#[test]
fn from_a_blocking_main_without_any_async_runtime() {
    futures::executor::block_on(async {
        let rt = Runtime::start(Config::default()).await.unwrap();
        let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
        let session = rt.open("plain-thread").await.unwrap();
        session.allocate(64 * KIB).await.unwrap();
        drop(session);
        let report = rt.shutdown().await;
        assert_eq!(report.gpu_after.expect("wgpu counters"), baseline);
        // Dropped just before shutdown: it ends once, as a disconnect or by the shutdown, whichever comes first.
        assert_eq!(report.sessions.stats.ended, 1);
    });
}
