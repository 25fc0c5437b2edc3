//! Email templates: subject, HTML body and text body per email and locale, embedded in the binary.
//!
//! Layout of `shared/mailer/templates/`:
//!
//! ```text
//! layout.html, layout.txt            structure shared by every email and locale (header, content, footer)
//! <locale>/layout.html, layout.txt   the locale's footer text; extends the shared layout
//! <locale>/<name>.subject.txt        one line
//! <locale>/<name>.html               extends "<locale>/layout.html", fills `content` (and optionally `reason`)
//! <locale>/<name>.txt                extends "<locale>/layout.txt"
//! ```
//!
//! Adding an email is adding its files for every locale and one `email!("name")` line in [`EMAILS`]; a missing
//! file is then a compile error, not a runtime surprise. `.html` templates escape every value, `.txt` templates
//! escape nothing, and a variable the caller did not pass is an error rather than empty text.
//!
//! Every template sees `product_name` (a global) and `locale` (the BCP 47 tag) besides the caller's context.

use std::fmt;

use events::Locale;
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value, context};

/// The product name shown in every header and footer unless [`Templates::with_product_name`] says otherwise.
const DEFAULT_PRODUCT_NAME: &str = "jetfn";

/// The locales every email must exist in; `Locale::as_str` values.
macro_rules! for_each_locale {
    ($m:ident!($($arg:tt)*)) => {
        [$m!("en", $($arg)*), $m!("vi", $($arg)*)]
    };
}

macro_rules! template {
    ($path:expr) => {
        ($path, include_str!(concat!("../templates/", $path)))
    };
}

macro_rules! locale_files {
    ($locale:literal, $name:literal) => {
        [
            template!(concat!($locale, "/", $name, ".subject.txt")),
            template!(concat!($locale, "/", $name, ".html")),
            template!(concat!($locale, "/", $name, ".txt")),
        ]
    };
}

macro_rules! locale_layouts {
    ($locale:literal,) => {
        [
            template!(concat!($locale, "/layout.html")),
            template!(concat!($locale, "/layout.txt")),
        ]
    };
}

macro_rules! email {
    ($name:literal) => {
        for_each_locale!(locale_files!($name))
    };
}

type Files = [[(&'static str, &'static str); 3]; 2];

/// Every email, one line each.
#[rustfmt::skip]
const EMAILS: &[Files] = &[
    email!("welcome"),
    email!("order_confirmation"),
    email!("order_admin_notification"),
    email!("shipping_notification"),
    email!("order_status"),
    email!("password_reset"),
    email!("email_verification"),
    email!("contact_notification"),
    email!("contact_acknowledgement"),
];

const LAYOUTS: [(&str, &str); 2] = [template!("layout.html"), template!("layout.txt")];
const LOCALE_LAYOUTS: [[(&str, &str); 2]; 2] = for_each_locale!(locale_layouts!());

/// A rendered email, ready for [`compose`](crate::compose).
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, trimmed.
    pub subject: String,
    /// The text/html part.
    pub html: String,
    /// The text/plain part.
    pub text: String,
}

impl fmt::Debug for Rendered {
    // Subjects and bodies carry personal data; show only their sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("subject_len", &self.subject.len())
            .field("html_len", &self.html.len())
            .field("text_len", &self.text.len())
            .finish()
    }
}

/// Rendering failed. Retrying the same event renders the same way, so treat it as permanent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// No such email, or not in this locale.
    #[error("no template {template:?} for locale {locale}")]
    Missing {
        /// The email name as passed to `render`.
        template: String,
        /// The locale asked for.
        locale: &'static str,
    },
    /// The template failed, typically a variable missing from the context.
    #[error("rendering {template:?} failed: {source}")]
    Render {
        /// The template file (`vi/welcome.html`).
        template: String,
        /// minijinja's error; it names the template line, not the values.
        #[source]
        source: minijinja::Error,
    },
}

/// The parsed templates, built once per process and shared (rendering takes `&self`).
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Parses every embedded template, with `product_name` = `jetfn`.
    pub fn new() -> Self {
        Self::with_product_name(DEFAULT_PRODUCT_NAME)
    }

    /// Parses every embedded template with the given product name in headers and footers.
    pub fn with_product_name(product_name: &str) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        // The default callback escapes `.html` and leaves `.txt` alone, which is what we want; set it explicitly so
        // a change of default upstream cannot turn escaping off.
        env.set_auto_escape_callback(minijinja::default_auto_escape_callback);
        env.add_global("product_name", product_name.to_owned());

        let files = LAYOUTS
            .iter()
            .chain(LOCALE_LAYOUTS.iter().flatten())
            .chain(EMAILS.iter().flatten().flatten());
        for (name, source) in files {
            env.add_template(name, source).expect(
                "embedded templates are parsed by the unit tests, so a syntax error cannot ship",
            );
        }
        Self { env }
    }

    /// Renders the subject, HTML body and text body of email `name` in `locale`.
    ///
    /// # Errors
    /// [`RenderError::Missing`] for an unknown email, [`RenderError::Render`] when a template fails (for example a
    /// variable missing from `ctx`).
    pub fn render(&self, name: &str, locale: Locale, ctx: Value) -> Result<Rendered, RenderError> {
        let tag = locale.as_str();
        let ctx = context! { locale => tag, ..ctx };
        let subject = self.render_file(name, locale, &format!("{tag}/{name}.subject.txt"), &ctx)?;
        let html = self.render_file(name, locale, &format!("{tag}/{name}.html"), &ctx)?;
        let text = self.render_file(name, locale, &format!("{tag}/{name}.txt"), &ctx)?;
        Ok(Rendered {
            subject: subject.trim().to_owned(),
            html,
            text,
        })
    }

    fn render_file(
        &self,
        name: &str,
        locale: Locale,
        file: &str,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        let template = self.env.get_template(file).map_err(|e| match e.kind() {
            ErrorKind::TemplateNotFound => RenderError::Missing {
                template: name.to_owned(),
                locale: locale.as_str(),
            },
            _ => RenderError::Render {
                template: file.to_owned(),
                source: e,
            },
        })?;
        template.render(ctx).map_err(|source| RenderError::Render {
            template: file.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(locale: Locale, name: &str) -> Rendered {
        Templates::new()
            .render("welcome", locale, context! { name => name })
            .expect("renders")
    }

    #[test]
    fn every_embedded_template_parses() {
        let templates = Templates::new();
        for (name, _) in LAYOUTS
            .iter()
            .chain(LOCALE_LAYOUTS.iter().flatten())
            .chain(EMAILS.iter().flatten().flatten())
        {
            templates.env.get_template(name).expect(name);
        }
    }

    #[test]
    fn welcome_in_english() {
        let r = welcome(Locale::En, "Ada");
        assert_eq!(r.subject, "Welcome to jetfn, Ada");
        for body in [&r.html, &r.text] {
            assert!(body.contains("Hi Ada"), "{body}");
            assert!(body.contains("Your account is ready"), "{body}");
            assert!(body.contains("You received this email because"), "{body}");
        }
        assert!(r.html.contains(r#"<html lang="en">"#));
        assert!(!r.text.contains('<'), "{}", r.text);
    }

    #[test]
    fn welcome_in_vietnamese() {
        let r = welcome(Locale::Vi, "Ngọc Anh");
        assert_eq!(r.subject, "Chào mừng Ngọc Anh đến với jetfn");
        for body in [&r.html, &r.text] {
            assert!(body.contains("Xin chào Ngọc Anh"), "{body}");
            assert!(body.contains("Tài khoản của bạn đã sẵn sàng"), "{body}");
            assert!(body.contains("Bạn nhận được email này vì"), "{body}");
        }
        assert!(r.html.contains(r#"<html lang="vi">"#));
    }

    #[test]
    fn product_name_comes_from_the_layout() {
        let r = Templates::with_product_name("Acme")
            .render("welcome", Locale::En, context! { name => "Ada" })
            .expect("renders");
        assert!(r.subject.contains("Acme"));
        assert!(r.html.contains("Acme"));
        assert!(r.text.contains("Acme"));
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let r = welcome(Locale::En, "<script>alert(1)</script>");
        assert!(
            r.html
                .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{}",
            r.html
        );
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(
            r.text.contains("Hi <script>alert(1)</script>"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        let err = Templates::new()
            .render("welcome", Locale::En, context! {})
            .expect_err("strict");
        assert!(matches!(err, RenderError::Render { .. }), "{err}");
        assert!(err.to_string().contains("en/welcome"), "{err}");
    }

    #[test]
    fn an_unknown_email_names_template_and_locale() {
        let err = Templates::new()
            .render("nope", Locale::Vi, context! { name => "Ada" })
            .expect_err("missing");
        assert!(matches!(err, RenderError::Missing { .. }));
        let text = err.to_string();
        assert!(text.contains("nope") && text.contains("vi"), "{text}");
    }

    #[test]
    fn debug_hides_the_content() {
        let r = welcome(Locale::En, "Ada");
        assert!(!format!("{r:?}").contains("Ada"));
    }

    /// Text a customer controls, injected into a name or message field of every sample.
    const INJECTED: &str = "<b>Ada</b>";
    const ESCAPED: &str = "&lt;b&gt;Ada&lt;&#x2f;b&gt;";

    fn items() -> Value {
        Value::from(vec![
            context! { name => "Notebook", quantity => 2, unit_price => "$12.00", line_total => "$24.00" },
            context! { name => "Pen <i>blue</i>", quantity => 1, unit_price => "$3.50", line_total => "$3.50" },
        ])
    }

    fn address(full: bool) -> Value {
        context! {
            name => INJECTED,
            line1 => "1 Main Street",
            line2 => full.then_some("Apartment 4"),
            city => "Springfield",
            region => full.then_some("IL"),
            postal_code => "62701",
            country => "US",
        }
    }

    /// Every email with a full context and one where every optional field is none; `true` when `INJECTED` is in
    /// a field the bodies show.
    fn samples(name: &str) -> Vec<(Value, bool)> {
        let none: Option<&str> = None;
        match name {
            "welcome" => vec![(context! { name => INJECTED }, true)],
            "order_confirmation" => [true, false]
                .map(|full| {
                    let ctx = context! {
                        name => INJECTED, order_number => "A-1001", items => items(),
                        subtotal => "$27.50", shipping => "$5.00", tax => "$3.44",
                        discount => full.then_some("$2.00"), total => "$33.94", currency => "USD",
                        address => address(full), order_url => full.then_some("https://shop.example/orders/A-1001"),
                    };
                    (ctx, true)
                })
                .to_vec(),
            "order_admin_notification" => [true, false]
                .map(|full| {
                    let ctx = context! {
                        order_number => "A-1001", customer_name => INJECTED, customer_email => "ada@example.com",
                        items => items(), item_count => 3, total => "$33.94", currency => "USD",
                        address => address(full), placed_at => "25 Nov 2026, 10:05 UTC",
                        admin_url => full.then_some("https://admin.example/orders/A-1001"),
                    };
                    (ctx, true)
                })
                .to_vec(),
            "shipping_notification" => [true, false]
                .map(|full| {
                    let ctx = context! {
                        name => INJECTED, order_number => "A-1001", carrier => "UPS",
                        tracking_number => "1Z999AA10123456784",
                        tracking_url => "https://track.example/?n=1Z999AA10123456784&lang=en",
                        estimated_delivery => full.then_some("28 Nov 2026"),
                    };
                    (ctx, true)
                })
                .to_vec(),
            "order_status" => [true, false]
                .map(|full| {
                    let ctx = context! {
                        name => INJECTED, order_number => "A-1001", previous_status => "shipped",
                        new_status => "delivered", note => full.then_some("Left at the door.\nThank you!"),
                        order_url => full.then_some("https://shop.example/orders/A-1001"),
                    };
                    (ctx, true)
                })
                .to_vec(),
            "password_reset" => vec![
                (
                    context! {
                        name => INJECTED, reset_url => "https://shop.example/reset?token=abc&x=1",
                        expires_in_minutes => 30, expires_at => "25 Nov 2026, 10:35 UTC",
                    },
                    true,
                ),
                (
                    context! {
                        name => none, reset_url => "https://shop.example/reset?token=abc&x=1",
                        expires_in_minutes => 1, expires_at => "25 Nov 2026, 10:06 UTC",
                    },
                    false,
                ),
            ],
            "email_verification" => vec![
                (context! { name => INJECTED, code => "042917", expires_in_minutes => 10 }, true),
                (context! { name => none, code => "042917", expires_in_minutes => 10 }, false),
            ],
            "contact_notification" => vec![(
                context! {
                    sender_name => INJECTED, sender_email => "ada@example.com", subject => "Bulk order",
                    message => format!("Hello,\n{INJECTED}\n\nRegards"), submitted_at => "25 Nov 2026, 10:05 UTC",
                },
                true,
            )],
            "contact_acknowledgement" => vec![(context! { name => INJECTED, subject => "Bulk order" }, true)],
            other => panic!("no sample context for email {other:?}; add one to `samples`"),
        }
    }

    #[test]
    fn every_email_renders_in_every_locale() {
        let templates = Templates::new();
        for files in EMAILS {
            let subject_file = files[0][0].0;
            let name = subject_file
                .split_once('/')
                .and_then(|(_, file)| file.strip_suffix(".subject.txt"))
                .expect("<locale>/<name>.subject.txt");
            for locale in [Locale::En, Locale::Vi] {
                for (ctx, injected) in samples(name) {
                    let r = templates
                        .render(name, locale, ctx)
                        .unwrap_or_else(|e| panic!("{name} in {}: {e:#}", locale.as_str()));
                    let at = format!("{name} in {}", locale.as_str());
                    assert!(!r.subject.is_empty(), "{at}: empty subject");
                    assert!(!r.subject.contains(['\n', '\r']), "{at}: {:?}", r.subject);
                    assert!(
                        !r.html.contains("<b>"),
                        "{at}: raw <b> in the HTML\n{}",
                        r.html
                    );
                    assert!(
                        !r.html.contains("<i>"),
                        "{at}: raw <i> in the HTML\n{}",
                        r.html
                    );
                    assert!(
                        r.html
                            .contains(&format!(r#"<html lang="{}">"#, locale.as_str())),
                        "{at}"
                    );
                    if injected {
                        assert!(r.html.contains(ESCAPED), "{at}\n{}", r.html);
                        assert!(r.text.contains(INJECTED), "{at}\n{}", r.text);
                    }
                    // A none printed as text, or a tag left in the text part, is a template bug.
                    for body in [&r.subject, &r.html, &r.text] {
                        // (`text-decoration:none` is CSS.)
                        let words = body.replace(":none", "").to_lowercase();
                        assert!(!words.contains("none"), "{at}: none rendered\n{body}");
                        assert!(!body.contains("{{") && !body.contains("{%"), "{at}\n{body}");
                    }
                    assert!(
                        !r.text.contains("<p") && !r.text.contains("<a "),
                        "{at}\n{}",
                        r.text
                    );
                    assert!(r.text.contains("jetfn"), "{at}: footer missing\n{}", r.text);
                }
            }
        }
    }

    #[test]
    fn optional_fields_show_only_when_present() {
        let templates = Templates::new();
        let [(full, _), (minimal, _)] =
            <[_; 2]>::try_from(samples("order_confirmation")).expect("two samples");
        let full = templates
            .render("order_confirmation", Locale::En, full)
            .expect("renders");
        let minimal = templates
            .render("order_confirmation", Locale::En, minimal)
            .expect("renders");
        for body in [&full.html, &full.text] {
            assert!(
                body.contains("Discount") && body.contains("-$2.00"),
                "{body}"
            );
            assert!(
                body.contains("Apartment 4") && body.contains("Springfield, IL 62701"),
                "{body}"
            );
        }
        assert!(
            full.text
                .contains("View your order: https://shop.example/orders/A-1001"),
            "{}",
            full.text
        );
        for body in [&minimal.html, &minimal.text] {
            assert!(
                !body.contains("Discount") && !body.contains("Apartment"),
                "{body}"
            );
            assert!(body.contains("Springfield 62701"), "{body}");
            assert!(!body.contains("View your order"), "{body}");
        }

        let reset = |name: Option<&str>| {
            templates
                .render(
                    "password_reset",
                    Locale::En,
                    context! { name, reset_url => "https://x.example/r", expires_in_minutes => 1, expires_at => "10:06" },
                )
                .expect("renders")
        };
        assert!(
            reset(None)
                .text
                .starts_with("jetfn\n\nHello,\n\nWe received"),
            "{}",
            reset(None).text
        );
        assert!(reset(None).text.contains("expires in 1 minute, at 10:06"));
        assert!(reset(Some("Ada")).html.contains("Hi Ada,"));
    }

    #[test]
    fn every_order_status_has_a_label_and_a_sentence() {
        let templates = Templates::new();
        let statuses = [
            "pending",
            "confirmed",
            "processing",
            "on_hold",
            "shipped",
            "delivered",
            "cancelled",
            "refunded",
        ];
        for locale in [Locale::En, Locale::Vi] {
            let mut sentences = std::collections::BTreeSet::new();
            for (i, &status) in statuses.iter().enumerate() {
                let previous = statuses[(i + 1) % statuses.len()];
                let ctx = context! {
                    name => "Ada", order_number => "A-1001", previous_status => previous, new_status => status,
                    note => None::<&str>, order_url => None::<&str>,
                };
                let r = templates
                    .render("order_status", locale, ctx)
                    .expect("renders");
                let at = format!("{status} in {}", locale.as_str());
                // The wire names never reach the reader, only the labels.
                assert!(!r.subject.contains(status), "{at}: {}", r.subject);
                for body in [&r.subject, &r.html, &r.text] {
                    assert!(!body.contains('_'), "{at}\n{body}");
                }
                assert!(
                    r.subject.starts_with(&format!(
                        "{} A-1001: ",
                        if locale == Locale::En {
                            "Order"
                        } else {
                            "Đơn hàng"
                        }
                    )),
                    "{at}: {}",
                    r.subject
                );
                let transition = r
                    .text
                    .lines()
                    .find(|line| line.contains(" → "))
                    .expect("previous → new");
                assert!(
                    transition.ends_with(&format!("{}.", r.subject.rsplit(": ").next().unwrap())),
                    "{at}: {transition}"
                );
                // The sentence is the line after the transition and the blank line.
                let sentence = r
                    .text
                    .lines()
                    .skip_while(|line| !line.contains(" → "))
                    .nth(2)
                    .expect("a sentence");
                assert!(
                    sentence.len() > 10 && !sentence.starts_with("--"),
                    "{at}: {sentence:?}"
                );
                sentences.insert(sentence.to_owned());
            }
            assert_eq!(
                sentences.len(),
                statuses.len(),
                "one distinct sentence per status"
            );
        }
    }
}
