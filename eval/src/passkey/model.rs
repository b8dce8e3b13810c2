//! What the sweep needs of a model: a small trait, so the evaluator is tested against a fake
//! whose recall is known exactly, and its implementation for a Coil model with mitigations.

use std::sync::Arc;

use coil_ssm::{Model, Plan, Sampler, SamplingConfig, Session, Tokenizer};

use super::EvalError;

/// One (model, mitigation) arm of a sweep.
pub trait Subject {
    /// A stream's state; forking clones it.
    type State;

    /// The checkpoint's name in results.
    fn model_name(&self) -> &str;
    /// The mitigation arm's name in results (`none` for the plain model).
    fn mitigation(&self) -> &str;
    /// N_S, the state's size in elements.
    fn state_elements(&self) -> usize;
    /// The length the checkpoint was trained at, when known.
    fn train_length(&self) -> Option<usize>;

    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError>;
    fn decode(&self, ids: &[u32]) -> Result<String, EvalError>;

    /// The state before any token.
    fn start(&self) -> Result<Self::State, EvalError>;
    fn fork(&self, state: &Self::State) -> Self::State;
    /// Consumes tokens.
    fn feed(&self, state: &mut Self::State, tokens: &[u32]) -> Result<(), EvalError>;
    /// Consumes the same tokens in every state; a model that can batch does them in one pass.
    fn feed_all(&self, states: &mut [&mut Self::State], tokens: &[u32]) -> Result<(), EvalError> {
        states.iter_mut().try_for_each(|state| self.feed(state, tokens))
    }
    /// Consumes `tail`, then greedily generates `count` tokens.
    fn answer(&self, state: &mut Self::State, tail: &[u32], count: usize) -> Result<Vec<u32>, EvalError>;
}

/// A Coil model with a mitigation plan.
pub struct CoilSubject {
    /// The model, shared.
    pub model: Arc<Model>,
    /// The mitigations of this arm.
    pub plan: Arc<Plan>,
    /// The model's tokenizer (prompts are built in its tokens).
    pub tokenizer: Arc<Tokenizer>,
    /// The checkpoint's name in results.
    pub name: String,
    /// The arm's name in results ([`Plan::describe`]).
    pub mitigation: String,
    /// The checkpoint's training length, when known (marked on the plots).
    pub train_length: Option<usize>,
    /// Tokens per prefill pass of each stream ([`Session::set_piece_len`]; memory grows with it).
    pub piece_len: usize,
}

impl Subject for CoilSubject {
    type State = Session;

    fn model_name(&self) -> &str {
        &self.name
    }

    fn mitigation(&self) -> &str {
        &self.mitigation
    }

    fn state_elements(&self) -> usize {
        self.model.config().state_elements()
    }

    fn train_length(&self) -> Option<usize> {
        self.train_length
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        Ok(self.tokenizer.encode(text)?)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, EvalError> {
        Ok(self.tokenizer.decode(ids)?)
    }

    fn start(&self) -> Result<Session, EvalError> {
        let mut session = Session::with_plan(self.model.clone(), self.plan.clone());
        session.set_piece_len(self.piece_len);
        Ok(session)
    }

    fn fork(&self, state: &Session) -> Session {
        state.fork()
    }

    fn feed(&self, state: &mut Session, tokens: &[u32]) -> Result<(), EvalError> {
        if !tokens.is_empty() {
            state.prefill(tokens)?;
        }
        Ok(())
    }

    fn feed_all(&self, states: &mut [&mut Session], tokens: &[u32]) -> Result<(), EvalError> {
        if !tokens.is_empty() && !states.is_empty() {
            let sequences = vec![tokens; states.len()];
            Session::prefill_batch(states, &sequences)?;
        }
        Ok(())
    }

    fn answer(&self, state: &mut Session, tail: &[u32], count: usize) -> Result<Vec<u32>, EvalError> {
        state.prefill(tail)?;
        // The same columns `run` samples from: real tokens, not the embedding's padding.
        let vocab = self.model.vocab_limit(Some(self.tokenizer.vocab_size()));
        let mut greedy = Sampler::new(SamplingConfig::default());
        Ok(state.generate(&mut greedy, count, vocab, |_| true)?)
    }
}
