//! The expression language of derived variables: a lexer, a recursive-descent parser into a
//! typed AST, NumPy-2 (NEP 50) type rules and a vectorised evaluator over flat arrays.
//!
//! Nothing here runs host code: an expression is data (an [`Expr`] tree) built from a fixed
//! grammar and evaluated by a fixed set of array operations. Errors carry the character
//! offset (0-based, in characters, not bytes) of what is wrong. Nesting is limited to
//! [`MAX_DEPTH`] so a hostile expression is an error, never a stack overflow.
//!
//! Grammar (lowest precedence first, binary operators left-associative except `**`):
//! ```text
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | cmp
//! cmp     := sum (("<"|"<="|">"|">="|"=="|"!=") sum)?
//! sum     := prod (("+"|"-") prod)*
//! prod    := unary (("*"|"/"|"//"|"%") unary)*
//! unary   := ("-"|"+") unary | power
//! power   := atom ("**" unary)?            # -2**2 == -(2**2), 2**-1 allowed, as Python
//! atom    := number | "nan" | "inf" | name | name "(" args ")" | "(" or ")"
//! ```

use std::collections::BTreeMap;

/// Deepest nesting of parentheses, calls and operators accepted.
pub const MAX_DEPTH: usize = 100;

/// Longest expression accepted, in characters (with [`MAX_DEPTH`], bounds the work of
/// checking and the recursion of evaluating it).
pub const MAX_LEN: usize = 10_000;

/// An error with the character offset it was found at.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("at character {pos}: {msg}")]
pub struct ExprError {
    /// 0-based offset in characters (not bytes), so a client can point at the spot in the
    /// expression it sent, whatever its encoding.
    pub pos: usize,
    /// What is wrong there, in words naming the token, variable or function.
    pub msg: String,
}

fn err<T>(pos: usize, msg: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError { pos, msg: msg.into() })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

const OPS: [&str; 15] = [
    "**", "//", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "<", ">", "(", ")",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let text: String = chars[start..i].iter().collect();
            let Ok(v) = text.parse::<f64>() else {
                return err(start, format!("malformed number '{text}'"));
            };
            out.push((Tok::Num(v), start));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Name(chars[start..i].iter().collect()), start));
            continue;
        }
        if c == ',' {
            out.push((Tok::Comma, start));
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let Some(op) = OPS
            .iter()
            .find(|o| two.starts_with(**o) && (o.len() == 2 || !two.starts_with("**")))
        else {
            return err(start, format!("unexpected character '{c}'"));
        };
        i += op.chars().count();
        out.push((
            match *op {
                "(" => Tok::LParen,
                ")" => Tok::RParen,
                o => Tok::Op(o),
            },
            start,
        ));
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`: true division, `x / 0` is ±inf or NaN as in NumPy (never an error).
    Div,
    /// `//`: floor division with Python's rounding toward −∞ (`-7 // 2 == -4`).
    FloorDiv,
    /// `%`: Python's modulo, the sign of the divisor (`-7 % 2 == 1`); `x % 0` is NaN.
    Mod,
    /// `**`: right-associative and binding tighter than unary minus, as in Python.
    Pow,
    /// `<`: false with NaN, as every ordered comparison.
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`: NaN equals nothing, itself included (use `isnan`).
    Eq,
    /// `!=`: true with NaN.
    Ne,
    /// `and`: element-wise on booleans only (NumPy's `&`, not Python's short circuit).
    And,
    /// `or`: element-wise on booleans only.
    Or,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
    pub(crate) fn is_cmp(self) -> bool {
        matches!(
            self,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne
        )
    }
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `+x`: no change to a number, but kept so that `+` on a boolean is refused as in NumPy.
    Plus,
    /// `not x`: element-wise on booleans only.
    Not,
}

/// Functions (a closed list: names map here or are an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `where(cond, a, b)`: `a` where `cond` is true, else `b` (NumPy's `where`): the way to
    /// mask values, since there are no statements.
    Where,
    /// `sqrt(x)`: NaN below zero, as NumPy (not an error).
    Sqrt,
    /// `abs(x)`
    Abs,
    /// `exp(x)`
    Exp,
    /// `log(x)`: the natural logarithm; −inf at 0, NaN below.
    Log,
    /// `log10(x)`
    Log10,
    /// `hypot(x, y)`: √(x² + y²) without overflow, e.g. wind speed from its components.
    Hypot,
    /// `minimum(a, b)` (also `min`): NaN if either is NaN, as NumPy's `minimum`.
    Minimum,
    /// `maximum(a, b)` (also `max`): NaN if either is NaN.
    Maximum,
    /// `clip(x, lo, hi)`: `minimum(maximum(x, lo), hi)`, NaN propagating.
    Clip,
    /// `isnan(x)`: a boolean, for `where` (comparisons cannot find NaN).
    IsNan,
}

const FUNCS: [(&str, Func, usize); 13] = [
    ("where", Func::Where, 3),
    ("sqrt", Func::Sqrt, 1),
    ("abs", Func::Abs, 1),
    ("exp", Func::Exp, 1),
    ("log", Func::Log, 1),
    ("log10", Func::Log10, 1),
    ("hypot", Func::Hypot, 2),
    ("minimum", Func::Minimum, 2),
    ("min", Func::Minimum, 2),
    ("maximum", Func::Maximum, 2),
    ("max", Func::Maximum, 2),
    ("clip", Func::Clip, 3),
    ("isnan", Func::IsNan, 1),
];

impl Func {
    pub(crate) fn name(self) -> &'static str {
        FUNCS
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or("?", |(n, _, _)| n)
    }
}

/// The syntax tree; `pos` is the character offset of the node's operator or first token.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal (also `nan`, `inf`): a weak Python scalar for typing ([`Ty::Weak`]).
    Num {
        /// The value, parsed as float64 like a Python float literal.
        value: f64,
        /// Where the literal starts.
        pos: usize,
    },
    /// A variable of the same dataset, read over the requested region.
    Var {
        /// The variable's name as the dataset spells it.
        name: String,
        /// Where the name starts.
        pos: usize,
    },
    /// `-x`, `+x`, `not x`.
    Unary {
        /// Which operator.
        op: UnOp,
        /// The operand.
        arg: Box<Expr>,
        /// Where the operator is.
        pos: usize,
    },
    /// `lhs op rhs`.
    Binary {
        /// Which operator.
        op: BinOp,
        /// The left operand.
        lhs: Box<Expr>,
        /// The right operand.
        rhs: Box<Expr>,
        /// Where the operator is (errors about the operation point there).
        pos: usize,
    },
    /// `func(args...)`, with as many arguments as the function takes (checked when parsed).
    Call {
        /// Which function.
        func: Func,
        /// The arguments in order.
        args: Vec<Expr>,
        /// Where the function's name starts.
        pos: usize,
    },
}

impl Expr {
    /// The character offset errors about this node point at.
    pub fn pos(&self) -> usize {
        match self {
            Expr::Num { pos, .. }
            | Expr::Var { pos, .. }
            | Expr::Unary { pos, .. }
            | Expr::Binary { pos, .. }
            | Expr::Call { pos, .. } => *pos,
        }
    }

    /// The names of the variables it reads, each once, in order of appearance.
    pub fn variables(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::Num { .. } => {}
                Expr::Var { name, .. } => {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                }
                Expr::Unary { arg, .. } => walk(arg, out),
                Expr::Binary { lhs, rhs, .. } => {
                    walk(lhs, out);
                    walk(rhs, out);
                }
                Expr::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// Prints an expression fully parenthesised, so that parsing it again gives the same tree
/// (up to positions).
impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Num { value, .. } => {
                if value.is_nan() {
                    write!(f, "nan")
                } else if value.is_infinite() {
                    write!(f, "inf")
                } else {
                    write!(f, "{value:?}")
                }
            }
            Expr::Var { name, .. } => write!(f, "{name}"),
            Expr::Unary { op, arg, .. } => match op {
                UnOp::Neg => write!(f, "(-{arg})"),
                UnOp::Plus => write!(f, "(+{arg})"),
                UnOp::Not => write!(f, "(not {arg})"),
            },
            Expr::Binary { op, lhs, rhs, .. } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            Expr::Call { func, args, .. } => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, ")")
            }
        }
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
}

/// Parses `src`.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    if src.chars().count() > MAX_LEN {
        return err(MAX_LEN, format!("expression longer than {MAX_LEN} characters"));
    }
    let mut p = Parser {
        toks: lex(src)?,
        at: 0,
        depth: 0,
    };
    let e = p.or()?;
    match p.peek() {
        (Tok::End, _) => Ok(e),
        (t, pos) => err(pos, format!("unexpected {} after the expression", describe(&t))),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(v) => format!("number {v}"),
        Tok::Name(n) => format!("name '{n}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "end of expression".into(),
    }
}

impl Parser {
    fn peek(&self) -> (Tok, usize) {
        self.toks
            .get(self.at)
            .cloned()
            .unwrap_or((Tok::End, self.toks.last().map_or(0, |t| t.1)))
    }
    fn bump(&mut self) -> (Tok, usize) {
        let t = self.peek();
        self.at += 1;
        t
    }
    fn is_op(&self, o: &str) -> bool {
        matches!(self.peek().0, Tok::Op(x) if x == o)
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(&self.peek().0, Tok::Name(x) if x == w)
    }
    fn enter(&mut self, pos: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(pos, format!("expression nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }
    fn bin(op: BinOp, lhs: Expr, rhs: Expr, pos: usize) -> Expr {
        Expr::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
            pos,
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let pos = self.peek().1;
        self.enter(pos)?;
        let base = self.depth;
        let mut e = self.and()?;
        while self.is_word("or") {
            let pos = self.bump().1;
            self.enter(pos)?;
            let r = self.and()?;
            e = Self::bin(BinOp::Or, e, r, pos);
        }
        self.depth = base - 1;
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        let base = self.depth;
        let mut e = self.not()?;
        while self.is_word("and") {
            let pos = self.bump().1;
            self.enter(pos)?;
            let r = self.not()?;
            e = Self::bin(BinOp::And, e, r, pos);
        }
        self.depth = base;
        Ok(e)
    }
    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.is_word("not") {
            let pos = self.bump().1;
            self.enter(pos)?;
            let arg = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Unary {
                op: UnOp::Not,
                arg: Box::new(arg),
                pos,
            });
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let e = self.sum()?;
        let op = match self.peek().0 {
            Tok::Op("<") => BinOp::Lt,
            Tok::Op("<=") => BinOp::Le,
            Tok::Op(">") => BinOp::Gt,
            Tok::Op(">=") => BinOp::Ge,
            Tok::Op("==") => BinOp::Eq,
            Tok::Op("!=") => BinOp::Ne,
            _ => return Ok(e),
        };
        let pos = self.bump().1;
        let r = self.sum()?;
        if let (Tok::Op(o @ ("<" | "<=" | ">" | ">=" | "==" | "!=")), p) = self.peek() {
            return err(p, format!("chained comparison '{o}': use 'and'"));
        }
        Ok(Self::bin(op, e, r, pos))
    }
    fn sum(&mut self) -> Result<Expr, ExprError> {
        let base = self.depth;
        let mut e = self.prod()?;
        loop {
            let op = match self.peek().0 {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                _ => {
                    self.depth = base;
                    return Ok(e);
                }
            };
            let pos = self.bump().1;
            self.enter(pos)?;
            let r = self.prod()?;
            e = Self::bin(op, e, r, pos);
        }
    }
    fn prod(&mut self) -> Result<Expr, ExprError> {
        let base = self.depth;
        let mut e = self.unary()?;
        loop {
            let op = match self.peek().0 {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                Tok::Op("//") => BinOp::FloorDiv,
                Tok::Op("%") => BinOp::Mod,
                _ => {
                    self.depth = base;
                    return Ok(e);
                }
            };
            let pos = self.bump().1;
            self.enter(pos)?;
            let r = self.unary()?;
            e = Self::bin(op, e, r, pos);
        }
    }
    fn unary(&mut self) -> Result<Expr, ExprError> {
        let op = if self.is_op("-") {
            UnOp::Neg
        } else if self.is_op("+") {
            UnOp::Plus
        } else {
            return self.power();
        };
        let pos = self.bump().1;
        self.enter(pos)?;
        let arg = self.unary()?;
        self.depth -= 1;
        Ok(Expr::Unary {
            op,
            arg: Box::new(arg),
            pos,
        })
    }
    fn power(&mut self) -> Result<Expr, ExprError> {
        let base = self.atom()?;
        if self.is_op("**") {
            let pos = self.bump().1;
            self.enter(pos)?;
            let exp = self.unary()?;
            self.depth -= 1;
            return Ok(Self::bin(BinOp::Pow, base, exp, pos));
        }
        Ok(base)
    }
    fn atom(&mut self) -> Result<Expr, ExprError> {
        let (t, pos) = self.bump();
        match t {
            Tok::Num(value) => Ok(Expr::Num { value, pos }),
            Tok::LParen => {
                let e = self.or()?;
                match self.bump() {
                    (Tok::RParen, _) => Ok(e),
                    (t, p) => err(
                        p,
                        format!("expected ')' (opened at character {pos}), found {}", describe(&t)),
                    ),
                }
            }
            Tok::Name(name) => {
                if matches!(name.as_str(), "and" | "or" | "not") {
                    return err(pos, format!("expected a value, found '{name}'"));
                }
                if !matches!(self.peek().0, Tok::LParen) {
                    return Ok(match name.as_str() {
                        "nan" => Expr::Num { value: f64::NAN, pos },
                        "inf" => Expr::Num {
                            value: f64::INFINITY,
                            pos,
                        },
                        _ => Expr::Var { name, pos },
                    });
                }
                let Some(&(_, func, arity)) = FUNCS.iter().find(|(n, _, _)| *n == name) else {
                    return err(pos, format!("unknown function '{name}'"));
                };
                self.bump();
                self.enter(pos)?;
                let mut args = Vec::new();
                if !matches!(self.peek().0, Tok::RParen) {
                    loop {
                        args.push(self.or()?);
                        match self.bump() {
                            (Tok::Comma, _) => continue,
                            (Tok::RParen, _) => break,
                            (t, p) => {
                                return err(
                                    p,
                                    format!(
                                        "expected ',' or ')' in the arguments of {name}, found {}",
                                        describe(&t)
                                    ),
                                );
                            }
                        }
                    }
                } else {
                    self.bump();
                }
                self.depth -= 1;
                if args.len() != arity {
                    return err(
                        pos,
                        format!("{name} takes {arity} argument(s), given {}", args.len()),
                    );
                }
                Ok(Expr::Call { func, args, pos })
            }
            t => err(pos, format!("expected a value, found {}", describe(&t))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Types (NumPy 2, NEP 50)

/// The type of an expression's values. `Weak` is a Python scalar (a literal, or arithmetic
/// on literals only): it takes the other operand's float type (`float32 - 273.15` is
/// float32), as NEP 50 specifies; alone it is float64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A comparison's result: stored as `bool` (NumPy's `?`), refused by arithmetic.
    Bool,
    /// float32: variables xarray decodes as float32 (float32 data, small integers with a fill
    /// value) stay float32, as in NumPy.
    F32,
    /// float64.
    F64,
    /// A Python scalar: takes the other operand's type.
    Weak,
}

impl Ty {
    /// The float type two operands are computed in.
    fn promote(a: Ty, b: Ty) -> Ty {
        match (a, b) {
            (Ty::F64, _) | (_, Ty::F64) => Ty::F64,
            (Ty::F32, _) | (_, Ty::F32) => Ty::F32,
            _ => Ty::Weak,
        }
    }
    /// The type stored: a weak result is float64.
    pub fn strong(self) -> Ty {
        if self == Ty::Weak { Ty::F64 } else { self }
    }
}

/// A type-checked expression: each node annotated with the type it is computed in.
#[derive(Clone, Debug)]
pub struct Typed {
    /// The checked tree.
    pub expr: Expr,
    /// The type of the result: the derived variable's dtype (after [`Ty::strong`]).
    pub ty: Ty,
    /// Input names in the order [`eval`] expects their values.
    pub inputs: Vec<String>,
}

/// Types `e` given the (decoded) types of its variables; unknown names are errors.
pub fn check(e: Expr, vars: &BTreeMap<String, Ty>) -> Result<Typed, ExprError> {
    let ty = type_of(&e, vars)?;
    let inputs = e.variables();
    if inputs.is_empty() {
        return err(0, "the expression reads no variable");
    }
    Ok(Typed { expr: e, ty, inputs })
}

fn numeric(t: Ty, pos: usize, what: &str) -> Result<(), ExprError> {
    if t == Ty::Bool {
        return err(
            pos,
            format!("{what} needs numbers, not booleans (a comparison's result)"),
        );
    }
    Ok(())
}

fn type_of(e: &Expr, vars: &BTreeMap<String, Ty>) -> Result<Ty, ExprError> {
    Ok(match e {
        Expr::Num { .. } => Ty::Weak,
        Expr::Var { name, pos } => match vars.get(name) {
            Some(t) => *t,
            None => return err(*pos, format!("unknown variable '{name}'")),
        },
        Expr::Unary { op, arg, pos } => {
            let t = type_of(arg, vars)?;
            match op {
                UnOp::Not => {
                    if t != Ty::Bool {
                        return err(*pos, "'not' needs a boolean (a comparison's result)");
                    }
                    Ty::Bool
                }
                _ => {
                    numeric(t, *pos, "unary minus/plus")?;
                    t
                }
            }
        }
        Expr::Binary { op, lhs, rhs, pos } => {
            let (a, b) = (type_of(lhs, vars)?, type_of(rhs, vars)?);
            match op {
                BinOp::And | BinOp::Or => {
                    if a != Ty::Bool || b != Ty::Bool {
                        return err(*pos, format!("'{}' needs booleans on both sides", op.symbol()));
                    }
                    Ty::Bool
                }
                op => {
                    numeric(a, lhs.pos(), &format!("'{}'", op.symbol()))?;
                    numeric(b, rhs.pos(), &format!("'{}'", op.symbol()))?;
                    if op.is_cmp() { Ty::Bool } else { Ty::promote(a, b) }
                }
            }
        }
        Expr::Call { func, args, pos } => {
            let ts = args
                .iter()
                .map(|a| type_of(a, vars))
                .collect::<Result<Vec<_>, _>>()?;
            match func {
                Func::Where => {
                    numeric(ts[1], args[1].pos(), "where")?;
                    numeric(ts[2], args[2].pos(), "where")?;
                    // a weak branch pair is computed as a numpy array: strong float64
                    Ty::promote(ts[1], ts[2]).strong()
                }
                Func::IsNan => {
                    numeric(ts[0], args[0].pos(), "isnan")?;
                    Ty::Bool
                }
                f => {
                    for (t, a) in ts.iter().zip(args) {
                        numeric(*t, a.pos(), f.name())?;
                    }
                    let _ = pos;
                    // numpy functions of Python scalars return numpy (strong) float64
                    ts.iter().fold(Ty::Weak, |a, b| Ty::promote(a, *b)).strong()
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Evaluation

/// Flat values of one node: length `n` (the region) or 1 (a scalar, broadcast).
#[derive(Clone, Debug, PartialEq)]
pub enum Col {
    /// Booleans of a comparison, `not`, `and`, `or` or `isnan`.
    Bool(Vec<bool>),
    /// Values computed in float32.
    F32(Vec<f32>),
    /// Values computed in float64.
    F64(Vec<f64>),
}

impl Col {
    fn len(&self) -> usize {
        match self {
            Col::Bool(v) => v.len(),
            Col::F32(v) => v.len(),
            Col::F64(v) => v.len(),
        }
    }
    fn to_f64(&self) -> Vec<f64> {
        match self {
            Col::Bool(v) => v.iter().map(|b| f64::from(u8::from(*b))).collect(),
            Col::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            Col::F64(v) => v.clone(),
        }
    }
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Col::Bool(v) => v.iter().map(|b| f32::from(u8::from(*b))).collect(),
            Col::F32(v) => v.clone(),
            // numpy's cast: round to nearest
            #[allow(clippy::cast_possible_truncation)]
            Col::F64(v) => v.iter().map(|x| *x as f32).collect(),
        }
    }
    fn to_bool(&self) -> Vec<bool> {
        match self {
            Col::Bool(v) => v.clone(),
            Col::F32(v) => v.iter().map(|x| *x != 0.0).collect(),
            Col::F64(v) => v.iter().map(|x| *x != 0.0).collect(),
        }
    }
}

fn zip2<A: Copy, B: Copy, R>(a: &[A], b: &[B], f: impl Fn(A, B) -> R) -> Vec<R> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            f(
                a[if a.len() == 1 { 0 } else { i }],
                b[if b.len() == 1 { 0 } else { i }],
            )
        })
        .collect()
}

fn zip3<A: Copy, B: Copy, C: Copy, R>(a: &[A], b: &[B], c: &[C], f: impl Fn(A, B, C) -> R) -> Vec<R> {
    let n = a.len().max(b.len()).max(c.len());
    let at = |l: usize, i: usize| if l == 1 { 0 } else { i };
    (0..n)
        .map(|i| f(a[at(a.len(), i)], b[at(b.len(), i)], c[at(c.len(), i)]))
        .collect()
}

/// Float operations in one precision, with NumPy's semantics.
trait Float:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    fn fmod(self, b: Self) -> Self;
    fn floor(self) -> Self;
    fn copysign(self, s: Self) -> Self;
    fn powf(self, b: Self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn log10(self) -> Self;
    fn hypot(self, b: Self) -> Self;
    fn is_nan(self) -> bool;
    fn is_sign_negative(self) -> bool;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const HALF: Self = 0.5;
            fn fmod(self, b: Self) -> Self {
                self % b
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn copysign(self, s: Self) -> Self {
                <$t>::copysign(self, s)
            }
            fn powf(self, b: Self) -> Self {
                <$t>::powf(self, b)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn log10(self) -> Self {
                <$t>::log10(self)
            }
            fn hypot(self, b: Self) -> Self {
                <$t>::hypot(self, b)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_sign_negative(self) -> bool {
                <$t>::is_sign_negative(self)
            }
        }
    };
}
float!(f32);
float!(f64);

/// numpy's `npy_divmod`: floor division and the remainder with the divisor's sign.
fn divmod<T: Float>(a: T, b: T) -> (T, T) {
    if b == T::ZERO {
        // numpy: a // 0 is a / 0 (inf or nan), a % 0 is nan
        return (a / b, a.fmod(b));
    }
    let mut m = a.fmod(b);
    let mut div = (a - m) / b;
    if m != T::ZERO {
        if b.is_sign_negative() != m.is_sign_negative() {
            m = m + b;
            div = div - T::ONE;
        }
    } else {
        m = T::ZERO.copysign(b);
    }
    let fd = if div != T::ZERO {
        let mut f = div.floor();
        if div - f > T::HALF {
            f = f + T::ONE;
        }
        f
    } else {
        T::ZERO.copysign(a / b)
    };
    (fd, m)
}

/// numpy's `minimum`/`maximum`: NaN in either operand gives NaN.
fn nan_min<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a <= b { a } else { b }
}
fn nan_max<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a >= b { a } else { b }
}

fn arith<T: Float>(op: BinOp, a: &[T], b: &[T], rhs_literal: Option<f64>) -> Vec<T> {
    match op {
        BinOp::Add => zip2(a, b, |x, y| x + y),
        BinOp::Sub => zip2(a, b, |x, y| x - y),
        BinOp::Mul => zip2(a, b, |x, y| x * y),
        BinOp::Div => zip2(a, b, |x, y| x / y),
        BinOp::FloorDiv => zip2(a, b, |x, y| divmod(x, y).0),
        BinOp::Mod => zip2(a, b, |x, y| divmod(x, y).1),
        // numpy's fast paths for an array to a scalar power
        BinOp::Pow => match rhs_literal {
            Some(2.0) => a.iter().map(|x| *x * *x).collect(),
            Some(0.5) => a.iter().map(|x| x.sqrt()).collect(),
            Some(1.0) => a.to_vec(),
            Some(-1.0) => a.iter().map(|x| T::ONE / *x).collect(),
            _ => zip2(a, b, T::powf),
        },
        _ => Vec::new(),
    }
}

fn compare<T: Float>(op: BinOp, a: &[T], b: &[T]) -> Vec<bool> {
    match op {
        BinOp::Lt => zip2(a, b, |x, y| x < y),
        BinOp::Le => zip2(a, b, |x, y| x <= y),
        BinOp::Gt => zip2(a, b, |x, y| x > y),
        BinOp::Ge => zip2(a, b, |x, y| x >= y),
        BinOp::Eq => zip2(a, b, |x, y| x == y),
        _ => zip2(a, b, |x, y| x != y),
    }
}

fn unary<T: Float>(f: Func, a: &[T]) -> Vec<T> {
    let g: fn(T) -> T = match f {
        Func::Sqrt => T::sqrt,
        Func::Abs => T::abs,
        Func::Exp => T::exp,
        Func::Log => T::ln,
        _ => T::log10,
    };
    a.iter().map(|x| g(*x)).collect()
}

fn binary_fn<T: Float>(f: Func, a: &[T], b: &[T]) -> Vec<T> {
    match f {
        Func::Hypot => zip2(a, b, T::hypot),
        Func::Minimum => zip2(a, b, nan_min),
        _ => zip2(a, b, nan_max),
    }
}

/// Evaluates a checked expression. `inputs[i]` are the decoded values of `t.inputs[i]`
/// (each of length `n` or 1); the result has length `n` (or 1 when every input is 0-d)
/// and the type `t.ty.strong()`.
pub fn eval(t: &Typed, inputs: &[Col]) -> Col {
    let vars: BTreeMap<&str, &Col> = t.inputs.iter().map(String::as_str).zip(inputs).collect();
    let tys = TyEnv::from(t, inputs);
    let out = node(&t.expr, &vars, &tys);
    cast(&out, t.ty.strong())
}

struct TyEnv(BTreeMap<String, Ty>);

impl TyEnv {
    fn from(t: &Typed, inputs: &[Col]) -> Self {
        TyEnv(
            t.inputs
                .iter()
                .zip(inputs)
                .map(|(n, c)| {
                    (
                        n.clone(),
                        match c {
                            Col::Bool(_) => Ty::Bool,
                            Col::F32(_) => Ty::F32,
                            Col::F64(_) => Ty::F64,
                        },
                    )
                })
                .collect(),
        )
    }
}

fn cast(c: &Col, t: Ty) -> Col {
    match t {
        Ty::Bool => Col::Bool(c.to_bool()),
        Ty::F32 => Col::F32(c.to_f32()),
        Ty::F64 | Ty::Weak => Col::F64(c.to_f64()),
    }
}

fn ty(e: &Expr, env: &TyEnv) -> Ty {
    // checked before evaluation: an error here cannot happen, Bool is a safe default
    type_of(e, &env.0).unwrap_or(Ty::Bool)
}

fn literal(e: &Expr) -> Option<f64> {
    match e {
        Expr::Num { value, .. } => Some(*value),
        Expr::Unary {
            op: UnOp::Neg, arg, ..
        } => literal(arg).map(|v| -v),
        _ => None,
    }
}

fn node(e: &Expr, vars: &BTreeMap<&str, &Col>, env: &TyEnv) -> Col {
    match e {
        Expr::Num { value, .. } => Col::F64(vec![*value]),
        Expr::Var { name, .. } => vars
            .get(name.as_str())
            .map_or(Col::F64(vec![f64::NAN]), |c| (*c).clone()),
        Expr::Unary { op, arg, .. } => {
            let a = node(arg, vars, env);
            match (op, a) {
                (UnOp::Not, a) => Col::Bool(a.to_bool().iter().map(|b| !b).collect()),
                (UnOp::Plus, a) => a,
                (UnOp::Neg, Col::F32(v)) => Col::F32(v.iter().map(|x| -x).collect()),
                (UnOp::Neg, a) => Col::F64(a.to_f64().iter().map(|x| -x).collect()),
            }
        }
        Expr::Binary { op, lhs, rhs, .. } => {
            let (a, b) = (node(lhs, vars, env), node(rhs, vars, env));
            match op {
                BinOp::And => Col::Bool(zip2(&a.to_bool(), &b.to_bool(), |x, y| x && y)),
                BinOp::Or => Col::Bool(zip2(&a.to_bool(), &b.to_bool(), |x, y| x || y)),
                op => {
                    let t = Ty::promote(ty(lhs, env), ty(rhs, env));
                    // the fast paths apply to an array base only
                    let lit = if ty(lhs, env) == Ty::Weak {
                        None
                    } else {
                        literal(rhs)
                    };
                    match (t, op.is_cmp()) {
                        (Ty::F32, true) => Col::Bool(compare(*op, &a.to_f32(), &b.to_f32())),
                        (_, true) => Col::Bool(compare(*op, &a.to_f64(), &b.to_f64())),
                        (Ty::F32, false) => Col::F32(arith(*op, &a.to_f32(), &b.to_f32(), lit)),
                        (_, false) => Col::F64(arith(*op, &a.to_f64(), &b.to_f64(), lit)),
                    }
                }
            }
        }
        Expr::Call { func, args, .. } => {
            let cols: Vec<Col> = args.iter().map(|a| node(a, vars, env)).collect();
            let t = ty(e, env);
            match func {
                Func::IsNan => Col::Bool(cols[0].to_f64().iter().map(|x| x.is_nan()).collect()),
                Func::Where => {
                    let c = cols[0].to_bool();
                    match t {
                        Ty::F32 => Col::F32(zip3(&c, &cols[1].to_f32(), &cols[2].to_f32(), |c, x, y| {
                            if c { x } else { y }
                        })),
                        _ => Col::F64(zip3(&c, &cols[1].to_f64(), &cols[2].to_f64(), |c, x, y| {
                            if c { x } else { y }
                        })),
                    }
                }
                Func::Clip => match t {
                    Ty::F32 => {
                        let lo = binary_fn(Func::Maximum, &cols[0].to_f32(), &cols[1].to_f32());
                        Col::F32(binary_fn(Func::Minimum, &lo, &cols[2].to_f32()))
                    }
                    _ => {
                        let lo = binary_fn(Func::Maximum, &cols[0].to_f64(), &cols[1].to_f64());
                        Col::F64(binary_fn(Func::Minimum, &lo, &cols[2].to_f64()))
                    }
                },
                Func::Hypot | Func::Minimum | Func::Maximum => match t {
                    Ty::F32 => Col::F32(binary_fn(*func, &cols[0].to_f32(), &cols[1].to_f32())),
                    _ => Col::F64(binary_fn(*func, &cols[0].to_f64(), &cols[1].to_f64())),
                },
                f => match t {
                    Ty::F32 => Col::F32(unary(*f, &cols[0].to_f32())),
                    _ => Col::F64(unary(*f, &cols[0].to_f64())),
                },
            }
        }
    }
}

/// Length of a column (for callers checking results).
pub fn col_len(c: &Col) -> usize {
    c.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tys(v: &[(&str, Ty)]) -> BTreeMap<String, Ty> {
        v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    fn run(src: &str, vars: &[(&str, Col)]) -> Col {
        let env: BTreeMap<String, Ty> = vars
            .iter()
            .map(|(n, c)| {
                let t = match c {
                    Col::Bool(_) => Ty::Bool,
                    Col::F32(_) => Ty::F32,
                    Col::F64(_) => Ty::F64,
                };
                (n.to_string(), t)
            })
            .collect();
        let t = check(parse(src).expect("parse"), &env).expect("check");
        let cols: Vec<Col> = t
            .inputs
            .iter()
            .map(|n| vars.iter().find(|(m, _)| m == n).expect("input").1.clone())
            .collect();
        eval(&t, &cols)
    }

    fn perr(src: &str) -> ExprError {
        parse(src).expect_err("should not parse")
    }

    #[test]
    fn precedence_is_pythons() {
        assert_eq!(parse("-2**2").expect("p").to_string(), "(-(2.0 ** 2.0))");
        assert_eq!(parse("2**-1").expect("p").to_string(), "(2.0 ** (-1.0))");
        assert_eq!(parse("2**3**2").expect("p").to_string(), "(2.0 ** (3.0 ** 2.0))");
        assert_eq!(parse("a - b - c").expect("p").to_string(), "((a - b) - c)");
        assert_eq!(
            parse("a + b * c // d % e").expect("p").to_string(),
            "(a + (((b * c) // d) % e))"
        );
        assert_eq!(
            parse("not a < 1 and b > 2 or c == 3").expect("p").to_string(),
            "(((not (a < 1.0)) and (b > 2.0)) or (c == 3.0))"
        );
        assert_eq!(
            parse("where(x >= 1e-3, nan, inf)").expect("p").to_string(),
            "where((x >= 0.001), nan, inf)"
        );
        assert_eq!(
            parse("min(a, max(b, .5))").expect("p").to_string(),
            "minimum(a, maximum(b, 0.5))"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_eq!(
            perr("tas - "),
            ExprError {
                pos: 6,
                msg: "expected a value, found end of expression".into()
            }
        );
        assert_eq!(perr("tas $ 1").pos, 4);
        assert_eq!(perr("(tas + 1").pos, 8);
        assert_eq!(perr("tas 1").pos, 4);
        assert_eq!(perr("foo(tas)").msg, "unknown function 'foo'");
        assert_eq!(
            perr("x + sqrt(a, b)"),
            ExprError {
                pos: 4,
                msg: "sqrt takes 1 argument(s), given 2".into()
            }
        );
        assert_eq!(perr("where(a, b)").pos, 0);
        assert_eq!(perr("hypot(a b)").pos, 8);
        assert_eq!(perr("1.2.3").msg, "malformed number '1.2.3'");
        assert_eq!(perr("a < b < c").pos, 6);
        assert_eq!(perr("a + and").pos, 4);
        assert_eq!(perr("").pos, 0);
        assert_eq!(perr("é + ü $").pos, 6, "positions count characters, not bytes");
        assert!(perr(&"a".repeat(MAX_LEN + 1)).msg.contains("longer than"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for src in [
            "(".repeat(100_000) + "a" + &")".repeat(100_000),
            "-".repeat(9_000) + "a",
            "not ".repeat(2_000) + "a",
            "sqrt(".repeat(2_000) + "a" + &")".repeat(2_000),
            "a".to_string() + &"**a".repeat(3_000),
            "a".to_string() + &"+a".repeat(3_000),
        ] {
            let e = parse(&src).expect_err("too deep");
            assert!(
                e.msg.contains("nested deeper") || e.msg.contains("longer than"),
                "{e}"
            );
        }
        // just under the limit parses
        let ok = "(".repeat(MAX_DEPTH - 1) + "a" + &")".repeat(MAX_DEPTH - 1);
        parse(&ok).expect("within the limit");
    }

    #[test]
    fn types_follow_nep50() {
        let env = tys(&[("t", Ty::F32), ("d", Ty::F64), ("b", Ty::Bool)]);
        let ty = |s: &str| check(parse(s).expect("p"), &env).map(|t| t.ty.strong());
        assert_eq!(ty("t - 273.15"), Ok(Ty::F32));
        assert_eq!(ty("t * 2 + 1e300"), Ok(Ty::F32));
        assert_eq!(ty("t + d"), Ok(Ty::F64));
        assert_eq!(
            ty("t + sqrt(2.0)"),
            Ok(Ty::F64),
            "numpy functions of scalars are strong float64"
        );
        assert_eq!(ty("t > 0"), Ok(Ty::Bool));
        assert_eq!(ty("where(t > 0, t, 0)"), Ok(Ty::F32));
        assert_eq!(ty("where(t > 0, 1, 0) + t"), Ok(Ty::F64));
        assert_eq!(ty("isnan(t) or b"), Ok(Ty::Bool));
        assert_eq!(ty("clip(t, 0, 1)"), Ok(Ty::F32));
        let bad = |s: &str| check(parse(s).expect("p"), &env).expect_err("type error");
        assert_eq!(
            bad("t + u"),
            ExprError {
                pos: 4,
                msg: "unknown variable 'u'".into()
            }
        );
        assert_eq!(bad("b + 1").pos, 0);
        assert_eq!(bad("not t").pos, 0);
        assert_eq!(bad("t and b").pos, 2);
        assert_eq!(
            bad("sqrt(t > 1)").pos,
            7,
            "a binary node is placed at its operator"
        );
        assert_eq!(bad("1 + 2").msg, "the expression reads no variable");
    }

    #[test]
    fn float32_arithmetic_stays_float32() {
        let t = vec![273.15f32, 300.0, f32::NAN, -1.5];
        let got = run("t - 273.15", &[("t", Col::F32(t.clone()))]);
        let want: Vec<f32> = t.iter().map(|x| x - 273.15f64 as f32).collect();
        assert_eq!(format!("{got:?}"), format!("{:?}", Col::F32(want)));
        let got = run(
            "sqrt(u**2 + v**2)",
            &[("u", Col::F32(vec![3.0, -5.0])), ("v", Col::F32(vec![4.0, 12.0]))],
        );
        assert_eq!(got, Col::F32(vec![5.0, 13.0]));
    }

    #[test]
    fn numpy_semantics_of_division_minimum_and_where() {
        let x = Col::F64(vec![7.0, -7.0, 7.0, 1.0, f64::NAN]);
        let y = Col::F64(vec![2.0, 2.0, -2.0, 0.0, 1.0]);
        let fd = run("x // y", &[("x", x.clone()), ("y", y.clone())]);
        assert_eq!(
            format!("{fd:?}"),
            format!("{:?}", Col::F64(vec![3.0, -4.0, -4.0, f64::INFINITY, f64::NAN]))
        );
        let m = run("x % y", &[("x", x.clone()), ("y", y.clone())]);
        let Col::F64(m) = m else { panic!("f64") };
        assert_eq!(&m[..3], &[1.0, 1.0, -1.0]);
        assert!(m[3].is_nan() && m[4].is_nan());
        let mn = run("minimum(x, y)", &[("x", x.clone()), ("y", y.clone())]);
        let Col::F64(mn) = mn else { panic!("f64") };
        assert_eq!(&mn[..4], &[2.0, -7.0, -2.0, 0.0]);
        assert!(mn[4].is_nan(), "NaN propagates as in numpy.minimum");
        let w = run("where(isnan(x), -1, x * 2)", &[("x", x)]);
        assert_eq!(w, Col::F64(vec![14.0, -14.0, 14.0, 2.0, -1.0]));
        let c = run(
            "clip(x, 0, 5) > 1 and not (y == 0)",
            &[
                ("x", Col::F64(vec![7.0, 0.5, 3.0])),
                ("y", Col::F64(vec![1.0, 1.0, 0.0])),
            ],
        );
        assert_eq!(c, Col::Bool(vec![true, false, false]));
        let s = run(
            "x + s",
            &[("x", Col::F64(vec![1.0, 2.0])), ("s", Col::F64(vec![10.0]))],
        );
        assert_eq!(s, Col::F64(vec![11.0, 12.0]), "a scalar input broadcasts");
        let l = run(
            "log10(x) + log(exp(x)) + abs(-x) + hypot(x, x) - x ** 3",
            &[("x", Col::F64(vec![1.0]))],
        );
        assert_eq!(l, Col::F64(vec![0.0 + 1.0 + 1.0 + 2f64.sqrt() - 1.0]));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_expr() -> impl Strategy<Value = Expr> {
            let leaf = prop_oneof![
                (0u32..1000).prop_map(|v| Expr::Num {
                    value: f64::from(v) / 8.0,
                    pos: 0
                }),
                prop_oneof![Just("a"), Just("b")].prop_map(|n| Expr::Var {
                    name: n.into(),
                    pos: 0
                }),
            ];
            leaf.prop_recursive(6, 64, 3, |inner| {
                prop_oneof![
                    (
                        inner.clone(),
                        inner.clone(),
                        prop_oneof![
                            Just(BinOp::Add),
                            Just(BinOp::Sub),
                            Just(BinOp::Mul),
                            Just(BinOp::Div),
                            Just(BinOp::FloorDiv),
                            Just(BinOp::Mod)
                        ]
                    )
                        .prop_map(|(l, r, op)| Expr::Binary {
                            op,
                            lhs: Box::new(l),
                            rhs: Box::new(r),
                            pos: 0
                        }),
                    inner.clone().prop_map(|a| Expr::Unary {
                        op: UnOp::Neg,
                        arg: Box::new(a),
                        pos: 0
                    }),
                    (inner.clone(), inner.clone()).prop_map(|(x, y)| Expr::Call {
                        func: Func::Maximum,
                        args: vec![x, y],
                        pos: 0
                    }),
                    inner.prop_map(|x| Expr::Call {
                        func: Func::Abs,
                        args: vec![x],
                        pos: 0
                    }),
                ]
            })
        }

        fn strip(e: &Expr) -> String {
            // positions differ after printing; compare the printed forms
            e.to_string()
        }

        fn scalar(e: &Expr, a: f64, b: f64) -> f64 {
            match e {
                Expr::Num { value, .. } => *value,
                Expr::Var { name, .. } => {
                    if name == "a" {
                        a
                    } else {
                        b
                    }
                }
                Expr::Unary { arg, .. } => -scalar(arg, a, b),
                Expr::Binary { op, lhs, rhs, .. } => {
                    let (x, y) = (scalar(lhs, a, b), scalar(rhs, a, b));
                    match op {
                        BinOp::Add => x + y,
                        BinOp::Sub => x - y,
                        BinOp::Mul => x * y,
                        BinOp::Div => x / y,
                        BinOp::FloorDiv => divmod(x, y).0,
                        _ => divmod(x, y).1,
                    }
                }
                Expr::Call {
                    func: Func::Abs,
                    args,
                    ..
                } => scalar(&args[0], a, b).abs(),
                Expr::Call { args, .. } => nan_max(scalar(&args[0], a, b), scalar(&args[1], a, b)),
            }
        }

        proptest! {
            #[test]
            fn printing_then_parsing_gives_the_same_tree(e in arb_expr()) {
                let again = parse(&e.to_string()).expect("printed expressions parse");
                prop_assert_eq!(strip(&again), strip(&e));
            }

            #[test]
            fn vectorised_evaluation_equals_a_scalar_evaluator(
                e in arb_expr(),
                a in proptest::collection::vec(-1e3f64..1e3, 1..20),
                b0 in -1e3f64..1e3,
            ) {
                let env = tys(&[("a", Ty::F64), ("b", Ty::F64)]);
                let t = check(e.clone(), &env);
                prop_assume!(t.is_ok());
                let t = t.expect("checked");
                let cols: Vec<Col> = t.inputs.iter().map(|n| if n == "a" { Col::F64(a.clone()) } else { Col::F64(vec![b0]) }).collect();
                let got = eval(&t, &cols).to_f64();
                for (i, g) in got.iter().enumerate() {
                    let ai = if t.inputs.contains(&"a".to_string()) { a[i] } else { a[0] };
                    let w = scalar(&e, ai, b0);
                    prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{} at {}: {} vs {}", e, i, g, w);
                }
            }

            #[test]
            fn arbitrary_input_never_panics(s in "[-+*/%()<>=!a-z0-9., ]{0,300}") {
                let _ = parse(&s).map(|e| check(e, &tys(&[("a", Ty::F32)])));
            }

            #[test]
            fn deep_random_nesting_never_panics(n in 0usize..5000, k in 0usize..4) {
                let open = ["(", "-", "sqrt(", "not "][k];
                let close = if open.ends_with('(') { ")" } else { "" };
                let s = open.repeat(n) + "a" + &close.repeat(n);
                let r = parse(&s);
                // levels each prefix takes: a call is a call and its argument
                let cost = [1, 1, 2, 1][k];
                prop_assert_eq!(r.is_ok(), cost * n < MAX_DEPTH);
            }
        }
    }
}
