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
}
