import Catalog
import NIOCore
import Synchronization

/// An event loop as a task executor, for tasks whose work is on that loop (the Consul watches, whose actor runs
/// there). Swift resumes an awaited continuation (every answer of AsyncHTTPClient, every `Task.sleep`) on the task's
/// executor preference, or else on its global pool, and only then hops back to the actor: on an actor whose
/// executor is an event loop, that is two threads woken for each answer. With this preference the answer resumes
/// where it was read. Child tasks inherit the preference; work meant for every core (the reads of a load) opts
/// out with `globalConcurrentExecutor`.
final class LoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    private init(_ loop: any EventLoop) { self.loop = loop }

    /// The one executor of `loop`, kept for the life of the process: a task holds its preference unowned, so the
    /// executor must outlive every task that prefers it (a watcher's scheduled reads included).
    static func of(_ loop: any EventLoop) -> LoopTaskExecutor {
        all.withLock { all in
            if let existing = all[ObjectIdentifier(loop)] { return existing }
            let created = LoopTaskExecutor(loop)
            all[ObjectIdentifier(loop)] = created
            return created
        }
    }

    private static let all = Mutex<[ObjectIdentifier: LoopTaskExecutor]>([:])

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // The loop is a serial executor too: jobs run as isolated to it, so a hop onto an actor that uses the same
        // loop as its executor needs no second trip through the loop's queue.
        loop.execute { job.runSynchronously(isolatedTo: self.loop.executor.asUnownedSerialExecutor(), taskExecutor: self.asUnownedTaskExecutor()) }
    }
}
