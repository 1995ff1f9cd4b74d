//! Lanes: the workers split into groups, one per core, each serving its own connections.
//!
//! Each lane is a [`JobQueue`] with its own epoll instance and its own pool of workers, and
//! runs as one event loop: its busy worker takes the next ready request of the lane's
//! connections without sleeping. A connection joins the lane of the core its packets arrive
//! on (`SO_INCOMING_CPU`). For a client on this machine that is the core where the kernel ran
//! its send, and for a remote one the core that took the packet from the network card. A local
//! client and its lane's worker thus tend to share one core, and each wakes the other there
//! instead of across cores. The connection stays in that lane until it goes back to the
//! poller. When most packets arrive on one core (a network card with one receive queue), that
//! core's lane would get every connection, so a lane that contains [`LANE_SLACK`] more
//! connections than the emptiest one gives new ones to the emptiest.
//!
//! Lanes share no lock, slot table or counter on the path of a keep-alive request. In
//! BENCHMARKS.md (tuning step 9), two lanes on 2 cores served about 15% more 64 KiB range
//! requests per second than one, at the same CPU per request. With connections dealt to the
//! lanes in turn instead of by core, they spent 19 us of CPU per request instead of 13, with a
//! context switch for almost every request.
//!
//! Lanes share the limiter, the poller and the handlers. Each lane may start up to `workers`
//! threads, so a lane whose connections hold every token still has workers to answer others
//! with 429.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::server::conn::Connection;
use crate::server::queue::JobQueue;
use crate::server::Job;

/// The lanes, shared by the poller and the server; clones refer to the same lanes.
#[derive(Clone)]
pub struct Lanes {
    inner: Arc<Inner>,
}

/// How many more connections than the emptiest lane a lane may hold before new connections of
/// its core go to the emptiest lane instead. A balance within this margin keeps each client on
/// its core's lane under a load of a few dozen connections, and spreads the work over the
/// lanes when all packets arrive on one core.
pub const LANE_SLACK: usize = 16;

struct Inner {
    queues: Vec<JobQueue>,
    /// The number of connections in each lane: its [`LaneMember`]s alive now.
    members: Vec<AtomicUsize>,
    /// The lane of each CPU number: CPUs in the order of the affinity mask, dealt to the lanes
    /// in turn, so that a container's CPUs 4 and 6 fill two lanes.
    cpu_lanes: Vec<usize>,
    /// Jobs placed in turn, for connections whose core is unknown.
    dealt: AtomicUsize,
}

impl Lanes {
    /// Creates `count` lanes (at least one) whose idle workers wait in epoll while fewer than
    /// `busy_limit` of the lane's workers are busy.
    pub fn new(count: usize, busy_limit: usize) -> std::io::Result<Lanes> {
        let queues = (0..count.max(1)).map(|_| JobQueue::new(busy_limit)).collect::<std::io::Result<Vec<_>>>()?;
        let cpu_lanes = cpu_lanes(queues.len());
        let members = queues.iter().map(|_| AtomicUsize::new(0)).collect();
        Ok(Lanes { inner: Arc::new(Inner { queues, members, cpu_lanes, dealt: AtomicUsize::new(0) }) })
    }

    /// Returns each lane's queue, for the lane's worker pool.
    pub fn queues(&self) -> &[JobQueue] {
        &self.inner.queues
    }

    /// Queues a parsed request in the lane of the core its packets arrived on, unless that lane
    /// contains [`LANE_SLACK`] more connections than the emptiest. Returns the job when the
    /// lanes are closed.
    // The job comes back unboxed: boxing it would cost an allocation on every request.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, mut job: Job) -> Result<(), Job> {
        job.conn.lane = None;
        let lane = self.lane_of(&job.conn);

        self.inner.members[lane].fetch_add(1, Ordering::Relaxed);
        job.conn.lane = Some(LaneMember { lanes: self.inner.clone(), lane });
        self.inner.queues[lane].push(job)
    }

    /// Takes back, from every lane, the connections watched for longer than the watch window.
    pub fn take_expired(&self) -> Vec<Connection> {
        let mut expired = Vec::new();
        for queue in &self.inner.queues {
            expired.extend(queue.take_expired());
        }
        expired
    }

    /// Closes every lane: see [`JobQueue::close`].
    pub fn close(&self) {
        for queue in &self.inner.queues {
            queue.close();
        }
    }

    /// Chooses the lane for a connection: that of the CPU its last packet arrived on (the next
    /// in turn when the kernel cannot tell), or the emptiest when that one is too full.
    fn lane_of(&self, conn: &Connection) -> usize {
        let lanes = self.inner.queues.len();
        if lanes == 1 {
            return 0;
        }
        let known = incoming_cpu(conn).and_then(|cpu| self.inner.cpu_lanes.get(cpu).copied());
        let preferred = known.unwrap_or_else(|| self.inner.dealt.fetch_add(1, Ordering::Relaxed) % lanes);

        let connections_in = |lane: usize| self.inner.members[lane].load(Ordering::Relaxed);
        let emptiest = (0..lanes).min_by_key(|&lane| connections_in(lane)).unwrap_or(preferred);
        if connections_in(preferred) >= connections_in(emptiest) + LANE_SLACK {
            emptiest
        } else {
            preferred
        }
    }
}

/// A connection's place in a lane's count, from [`Lanes::push`] until it is dropped: when the
/// connection closes, goes back to the poller, or is placed again.
pub struct LaneMember {
    lanes: Arc<Inner>,
    lane: usize,
}

impl Drop for LaneMember {
    fn drop(&mut self) {
        self.lanes.members[self.lane].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns the CPU that processed the connection's last incoming packet, or `None` when the
/// kernel does not report one.
fn incoming_cpu(conn: &Connection) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the socket is open; `cpu` and `len` are valid for the writes of an int option.
    let got = unsafe {
        libc::getsockopt(
            conn.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (got == 0).then_some(cpu).and_then(|cpu| usize::try_from(cpu).ok())
}

/// Maps each CPU number in the process's affinity mask to a lane, in turn. CPUs outside the
/// mask (or every CPU, when the mask cannot be read) fall back to `cpu % lanes`.
fn cpu_lanes(lanes: usize) -> Vec<usize> {
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it for this thread,
    // which at startup has the process's mask.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;

    let mut map: Vec<usize> = (0..max).map(|cpu| cpu % lanes).collect();
    if read {
        // SAFETY: CPU_ISSET only reads the set, for numbers below CPU_SETSIZE.
        let allowed = (0..max).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) });
        for (turn, cpu) in allowed.enumerate() {
            map[cpu] = turn % lanes;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::queue::Work;
    use crate::server::request::{parse_head, ParseOutcome};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// Builds a job for a connection to `listener` whose request was sent from CPU `cpu` (any
    /// CPU when `None`). Returns the client side too, so the connection stays open.
    fn job_from(listener: &TcpListener, cpu: Option<usize>) -> (Job, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            let mut client = TcpStream::connect(addr).unwrap();
            client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            client
        })
        .join()
        .unwrap();

        let (server, peer) = listener.accept().unwrap();
        let mut conn = Connection::new(server, peer, Arc::new(AtomicUsize::new(1)));
        while conn.buffered().is_empty() {
            conn.try_fill().unwrap();
        }
        let ParseOutcome::Complete(request, _) = parse_head(conn.buffered(), peer) else {
            panic!("the test head does not parse");
        };
        (Job { conn, request }, client)
    }

    /// Pins the calling thread to CPU `cpu`.
    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed set is empty; CPU_SET writes one bit below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "cannot pin to CPU {cpu}");
        }
    }

    /// Lists the CPUs this test may run on, in order.
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: as in `cpu_lanes`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }, 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
    }

    /// Closes the lanes and counts the jobs each one held.
    fn jobs_per_lane(lanes: &Lanes) -> Vec<usize> {
        lanes.close();
        lanes.queues().iter().map(|queue| std::iter::from_fn(|| queue.next().map(drop)).count()).collect()
    }

    #[test]
    fn lanes_place_connection_by_cpu() {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!("skipped: this test needs 2 CPUs to send from, and may run on {cpus:?}");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();

        for (turn, &cpu) in cpus.iter().take(4).enumerate() {
            let lanes = Lanes::new(2, 1).unwrap();
            let (job, _client) = job_from(&listener, Some(cpu));
            assert!(lanes.push(job).is_ok());
            let mut expected = [0, 0];
            expected[turn % 2] = 1;
            assert_eq!(jobs_per_lane(&lanes), expected, "a request sent from CPU {cpu} (CPUs {cpus:?})");
        }
    }

    #[test]
    fn lanes_full_lane_spills_to_emptiest() {
        let cpus = allowed_cpus();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lanes = Lanes::new(2, 1).unwrap();
        let preferred = lanes.inner.cpu_lanes[cpus[0]];

        let mut clients = Vec::new();
        for _ in 0..LANE_SLACK + 4 {
            let (job, client) = job_from(&listener, Some(cpus[0]));
            assert!(lanes.push(job).is_ok());
            clients.push(client);
        }

        // The first LANE_SLACK stay on the core's lane; from then on the two alternate.
        let mut expected = [0, 0];
        expected[preferred] = LANE_SLACK + 2;
        expected[1 - preferred] = 2;
        assert_eq!(jobs_per_lane(&lanes), expected);
    }

    #[test]
    fn lanes_count_members_until_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lanes = Lanes::new(2, 1).unwrap();
        let held = || lanes.inner.members.iter().map(|m| m.load(Ordering::Relaxed)).collect::<Vec<_>>();
        let (job, _client) = job_from(&listener, None);
        let lane = lanes.lane_of(&job.conn);
        assert!(lanes.push(job).is_ok());
        assert_eq!(held().iter().sum::<usize>(), 1);
        assert_eq!(held()[lane], 1);

        // Placed again, the connection counts once.
        let (Work::Request(job), busy) = lanes.queues()[lane].next().unwrap() else { panic!("expected the queued job") };
        drop(busy);
        assert!(lanes.push(job).is_ok());
        assert_eq!(held().iter().sum::<usize>(), 1);

        assert_eq!(jobs_per_lane(&lanes).iter().sum::<usize>(), 1);
        assert_eq!(held(), [0, 0]);
    }

    #[test]
    fn lanes_single_takes_every_job() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lanes = Lanes::new(1, 1).unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (job, client) = job_from(&listener, None);
            assert!(lanes.push(job).is_ok());
            clients.push(client);
        }
        lanes.close();
        for _ in 0..3 {
            assert!(matches!(lanes.queues()[0].next(), Some((Work::Request(_), _))));
        }
        assert!(lanes.queues()[0].next().is_none());
    }

    #[test]
    fn lanes_closed_return_job() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lanes = Lanes::new(3, 1).unwrap();
        lanes.close();
        for _ in 0..3 {
            let (job, _client) = job_from(&listener, None);
            assert!(lanes.push(job).is_err());
        }
    }

    #[test]
    fn cpu_lanes_deal_mask_in_turn() {
        let cpus = allowed_cpus();
        let map = cpu_lanes(2);
        for (turn, &cpu) in cpus.iter().enumerate() {
            assert_eq!(map[cpu], turn % 2, "CPU {cpu} of {cpus:?}");
        }
        assert_eq!(map.len(), libc::CPU_SETSIZE as usize);
    }
}
