//! `when_all` / `when_any` for orchestrations, decided by arrival order.
//!
//! The engine delivers one completion at a time and polls after each, so normally only one child
//! of a `when_any` can become ready per poll. When several are ready at the first poll (they all
//! completed before the `when_any` was built), the winner is the one whose completion arrived
//! first: every slot future reports the log position that made it ready (the *ready mark*), and
//! composites report the mark of the completion that finished them.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// The ready mark of the future that last returned `Ready` (0: not from a slot).
    static READY_MARK: Cell<usize> = const { Cell::new(0) };
}

/// Record that a future became ready because of log position `mark - 1`.
pub(crate) fn mark_ready(mark: usize) {
    READY_MARK.with(|m| m.set(m.get().max(mark)));
}

/// Poll `fut`, returning its output and its ready mark, leaving the caller's mark untouched.
fn poll_marked<F: Future + ?Sized>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<(F::Output, usize)> {
    let outer = READY_MARK.with(|m| m.replace(0));
    let polled = fut.poll(cx);
    let mark = READY_MARK.with(|m| m.replace(outer));
    polled.map(|out| (out, mark))
}

/// Wait for all futures; outputs in argument order.
pub fn when_all<F: Future>(futures: Vec<F>) -> WhenAll<F> {
    let n = futures.len();
    WhenAll {
        futures: futures.into_iter().map(|f| Some(Box::pin(f))).collect(),
        outputs: (0..n).map(|_| None).collect(),
        mark: 0,
    }
}

/// Future of [`when_all`].
pub struct WhenAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
    mark: usize,
}

impl<F: Future> Unpin for WhenAll<F> {}

impl<F: Future> Future for WhenAll<F> {
    type Output = Vec<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for (slot, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(fut) = slot {
                if let Poll::Ready((out, mark)) = poll_marked(fut.as_mut(), cx) {
                    *output = Some(out);
                    this.mark = this.mark.max(mark);
                    *slot = None;
                }
            }
        }
        if this.futures.iter().all(Option::is_none) {
            mark_ready(this.mark);
            Poll::Ready(this.outputs.iter_mut().map(|o| o.take().expect("every output is set")).collect())
        } else {
            Poll::Pending
        }
    }
}

/// Wait for the first future to finish; `(index, output)` of the winner. The others are dropped
/// (their slots are abandoned: late completions are recorded and ignored).
pub fn when_any<F: Future>(futures: Vec<F>) -> WhenAny<F> {
    WhenAny { futures: futures.into_iter().map(|f| Box::pin(f)).collect() }
}

/// Future of [`when_any`].
pub struct WhenAny<F: Future> {
    futures: Vec<Pin<Box<F>>>,
}

impl<F: Future> Unpin for WhenAny<F> {}

impl<F: Future> Future for WhenAny<F> {
    type Output = (usize, F::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut best: Option<(usize, usize, F::Output)> = None;
        for (i, fut) in self.futures.iter_mut().enumerate() {
            if let Poll::Ready((out, mark)) = poll_marked(fut.as_mut(), cx) {
                if best.as_ref().is_none_or(|(_, m, _)| mark < *m) {
                    best = Some((i, mark, out));
                }
            }
        }
        match best {
            Some((i, mark, out)) => {
                mark_ready(mark);
                self.futures.clear();
                Poll::Ready((i, out))
            }
            None => Poll::Pending,
        }
    }
}

/// One of two outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<L, R> {
    /// The first future won.
    Left(L),
    /// The second future won.
    Right(R),
}

/// Race two futures of different types; the earlier completion wins.
pub fn when_any2<A: Future, B: Future>(a: A, b: B) -> WhenAny2<A, B> {
    WhenAny2 { a: Some(Box::pin(a)), b: Some(Box::pin(b)) }
}

/// Future of [`when_any2`].
pub struct WhenAny2<A: Future, B: Future> {
    a: Option<Pin<Box<A>>>,
    b: Option<Pin<Box<B>>>,
}

impl<A: Future, B: Future> Unpin for WhenAny2<A, B> {}

impl<A: Future, B: Future> Future for WhenAny2<A, B> {
    type Output = Either<A::Output, B::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let a = self.a.as_mut().map(|f| poll_marked(f.as_mut(), cx));
        let b = self.b.as_mut().map(|f| poll_marked(f.as_mut(), cx));
        let winner = match (a, b) {
            (Some(Poll::Ready((x, ma))), Some(Poll::Ready((y, mb)))) => {
                if mb < ma {
                    drop(x);
                    Some((Either::Right(y), mb))
                } else {
                    drop(y);
                    Some((Either::Left(x), ma))
                }
            }
            (Some(Poll::Ready((x, m))), _) => Some((Either::Left(x), m)),
            (_, Some(Poll::Ready((y, m)))) => Some((Either::Right(y), m)),
            _ => None,
        };
        match winner {
            Some((out, mark)) => {
                mark_ready(mark);
                self.a = None;
                self.b = None;
                Poll::Ready(out)
            }
            None => Poll::Pending,
        }
    }
}
