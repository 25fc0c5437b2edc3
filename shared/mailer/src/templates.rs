//! Email templates: subject, HTML body and text body per email and locale, embedded in the binary.
//!
//! The layouts every email shares live here, in `shared/mailer/templates/`; each email lives with the function
//! that sends it, in `functions/<function>/templates/`, and reaches [`Templates::new`] through [`templates!`]:
//!
//! ```text
//! shared/mailer/templates/layout.html, layout.txt         structure of every email (header, content, footer)
//! shared/mailer/templates/<locale>/layout.html, layout.txt the locale's footer text; extends the shared layout
//! functions/<f>/templates/<locale>/<name>.subject.txt      one line
//! functions/<f>/templates/<locale>/<name>.html             extends "<locale>/layout.html", fills `content`
//!                                                          (and optionally `reason`)
//! functions/<f>/templates/<locale>/<name>.txt              extends "<locale>/layout.txt"
//! ```
//!
//! Adding an email is adding its files for every locale in the function's crate and its name to the function's
//! `templates!` list; a missing file is then a compile error, a template that does not parse an error at start-up,
//! and neither is a runtime surprise per event. `.html` templates escape every value, `.txt` templates escape
//! nothing, and a variable the caller did not pass is an error rather than empty text.
//!
//! Every template sees `product_name` (a global) and `locale` (the BCP 47 tag) besides the caller's context.

use std::fmt;

use events::Locale;
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value, context};

/// The product name shown in every header and footer unless [`Templates::with_product_name`] says otherwise.
const DEFAULT_PRODUCT_NAME: &str = "jetfn";

/// The locales every email must exist in (`Locale::as_str` values); [`templates!`] spells them out again, because
/// `concat!` needs literals.
const LOCALES: [&str; 2] = ["en", "vi"];

macro_rules! layout {
    ($path:literal) => {
        ($path, include_str!(concat!("../templates/", $path)))
    };
}

/// The layouts every email extends.
const LAYOUTS: [(&str, &str); 6] = [
    layout!("layout.html"),
    layout!("layout.txt"),
    layout!("en/layout.html"),
    layout!("en/layout.txt"),
    layout!("vi/layout.html"),
    layout!("vi/layout.txt"),
];

/// Embeds emails from the calling crate's `templates/<locale>/<name>.{subject.txt,html,txt}`, for
/// [`Templates::new`]: `mailer::templates!["order_confirmation", "order_admin_notification"]` is a
/// `&'static [EmailTemplate]`.
///
/// The paths start at the calling crate's `CARGO_MANIFEST_DIR`, so a function adds its emails without touching
/// this crate, and a file missing in any locale fails the build.
#[macro_export]
macro_rules! templates {
    ($($name:literal),+ $(,)?) => {
        &[$(
            $crate::EmailTemplate::__embedded(
                $name,
                [$crate::__locale_files!("en", $name), $crate::__locale_files!("vi", $name)],
            )
        ),+]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __locale_files {
    ($locale:literal, $name:literal) => {
        (
            $locale,
            [
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/templates/",
                    $locale,
                    "/",
                    $name,
                    ".subject.txt"
                )),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/templates/",
                    $locale,
                    "/",
                    $name,
                    ".html"
                )),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/templates/",
                    $locale,
                    "/",
                    $name,
                    ".txt"
                )),
            ],
        )
    };
}

/// One email's sources in every locale, embedded by [`templates!`] in the binary that sends it.
#[derive(Clone, Copy)]
pub struct EmailTemplate {
    name: &'static str,
    /// (locale tag, [subject, html, text]) per locale.
    locales: [(&'static str, [&'static str; 3]); 2],
}

impl fmt::Debug for EmailTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailTemplate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EmailTemplate {
    /// Used by [`templates!`]; not part of the API.
    #[doc(hidden)]
    pub const fn __embedded(
        name: &'static str,
        locales: [(&'static str, [&'static str; 3]); 2],
    ) -> Self {
        Self { name, locales }
    }

    /// The email's name, as passed to [`Templates::render`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// (`<locale>/<name>.<extension>`, source) of every file.
    fn files(&self) -> impl Iterator<Item = (String, &'static str)> + '_ {
        self.locales.iter().flat_map(move |(locale, sources)| {
            ["subject.txt", "html", "txt"].into_iter().zip(sources).map(
                move |(extension, source)| (format!("{locale}/{}.{extension}", self.name), *source),
            )
        })
    }
}

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

/// The templates a function handed to [`Templates::new`] cannot be used; the function should not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A file does not parse.
    #[error("template {template:?} does not parse: {source}")]
    Syntax {
        /// The template file (`vi/welcome.html`).
        template: String,
        /// minijinja's error, with the line.
        #[source]
        source: minijinja::Error,
    },
    /// Two emails, or an email and a shared layout, have the same name.
    #[error(
        "template {template:?} is defined twice (an email listed twice, or named like a shared layout)"
    )]
    Duplicate {
        /// The template file (`en/layout.html`).
        template: String,
    },
    /// An email was embedded for other locales than the ones every email must exist in.
    #[error("email {email:?} is embedded for locales {found:?}, expected {expected:?}")]
    Locales {
        /// The email name.
        email: &'static str,
        /// The locales it came with.
        found: Vec<&'static str>,
        /// The locales every email must exist in.
        expected: Vec<&'static str>,
    },
}

/// The parsed templates, built once per process at start-up and shared (rendering takes `&self`).
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Parses the shared layouts and `emails` (from [`templates!`]), with `product_name` = `jetfn`.
    ///
    /// # Errors
    /// A [`TemplateError`]: a file that does not parse, or a name defined twice.
    pub fn new(emails: &[EmailTemplate]) -> Result<Self, TemplateError> {
        Self::with_product_name(emails, DEFAULT_PRODUCT_NAME)
    }

    /// [`Templates::new`] with the given product name in headers and footers.
    ///
    /// # Errors
    /// As [`Templates::new`].
    pub fn with_product_name(
        emails: &[EmailTemplate],
        product_name: &str,
    ) -> Result<Self, TemplateError> {
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

        let layouts = LAYOUTS
            .iter()
            .map(|&(name, source)| (name.to_owned(), source));
        for email in emails {
            let found: Vec<_> = email.locales.iter().map(|(locale, _)| *locale).collect();
            if found != LOCALES {
                return Err(TemplateError::Locales {
                    email: email.name,
                    found,
                    expected: LOCALES.to_vec(),
                });
            }
        }
        for (name, source) in layouts.chain(emails.iter().flat_map(EmailTemplate::files)) {
            if env.get_template(&name).is_ok() {
                return Err(TemplateError::Duplicate { template: name });
            }
            // Parsing happens here, once, so a syntax error stops the function at start-up.
            env.add_template_owned(name.clone(), source)
                .map_err(|source| TemplateError::Syntax {
                    template: name,
                    source,
                })?;
        }
        Ok(Self { env })
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

    /// An email of this crate's tests only, built like a function's: it extends the locale layouts and fills
    /// `content` and `reason`.
    const GREETING: EmailTemplate = EmailTemplate::__embedded(
        "greeting",
        [
            (
                "en",
                [
                    "Hello from {{ product_name }}, {{ name }}\n",
                    "{% extends \"en/layout.html\" %}\n{% block content %}\n<p>Hi {{ name }},</p>\n{% endblock %}\n",
                    "{% extends \"en/layout.txt\" %}\n{% block content %}\nHi {{ name }},\n{% endblock %}\n",
                ],
            ),
            (
                "vi",
                [
                    "Xin chào {{ name }}\n",
                    "{% extends \"vi/layout.html\" %}\n{% block content %}\n<p>Xin chào {{ name }},</p>\n{% endblock %}\n{% block reason %}Lý do.{% endblock %}\n",
                    "{% extends \"vi/layout.txt\" %}\n{% block content %}\nXin chào {{ name }},\n{% endblock %}\n{% block reason %}Lý do.{% endblock %}\n",
                ],
            ),
        ],
    );

    fn templates() -> Templates {
        Templates::new(&[GREETING]).expect("the test email parses")
    }

    fn greeting(locale: Locale, name: &str) -> Rendered {
        templates()
            .render("greeting", locale, context! { name => name })
            .expect("renders")
    }

    #[test]
    fn every_layout_parses() {
        let templates = Templates::new(&[]).expect("the layouts parse");
        for (name, _) in LAYOUTS {
            templates.env.get_template(name).expect(name);
        }
    }

    #[test]
    fn the_layout_wraps_an_email_in_every_locale() {
        let r = greeting(Locale::En, "Ada");
        assert_eq!(r.subject, "Hello from jetfn, Ada");
        assert!(r.html.contains(r#"<html lang="en">"#), "{}", r.html);
        for body in [&r.html, &r.text] {
            assert!(body.contains("Hi Ada"), "{body}");
            assert!(
                body.contains("You received this email because you have an account with jetfn."),
                "{body}"
            );
        }
        assert!(r.text.starts_with("jetfn\n\nHi Ada,\n"), "{:?}", r.text);
        assert!(!r.text.contains('<'), "{}", r.text);

        let r = greeting(Locale::Vi, "Ngọc Anh");
        assert_eq!(r.subject, "Xin chào Ngọc Anh");
        assert!(r.html.contains(r#"<html lang="vi">"#), "{}", r.html);
        for body in [&r.html, &r.text] {
            assert!(body.contains("Xin chào Ngọc Anh"), "{body}");
            assert!(
                body.contains("Lý do."),
                "the email's reason replaces the layout's\n{body}"
            );
            assert!(!body.contains("Bạn nhận được email này vì"), "{body}");
        }
    }

    #[test]
    fn product_name_comes_from_the_layout() {
        let r = Templates::with_product_name(&[GREETING], "Acme")
            .expect("parses")
            .render("greeting", Locale::En, context! { name => "Ada" })
            .expect("renders");
        assert!(r.subject.contains("Acme"));
        assert!(r.html.contains("Acme"));
        assert!(r.text.contains("Acme"));
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let r = greeting(Locale::En, "<script>alert(1)</script>");
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
        let err = templates()
            .render("greeting", Locale::En, context! {})
            .expect_err("strict");
        assert!(matches!(err, RenderError::Render { .. }), "{err}");
        assert!(err.to_string().contains("en/greeting"), "{err}");
    }

    #[test]
    fn an_unknown_email_names_template_and_locale() {
        let err = templates()
            .render("nope", Locale::Vi, context! { name => "Ada" })
            .expect_err("missing");
        assert!(matches!(err, RenderError::Missing { .. }));
        let text = err.to_string();
        assert!(text.contains("nope") && text.contains("vi"), "{text}");
    }

    #[test]
    fn debug_hides_the_content() {
        let r = greeting(Locale::En, "Ada");
        assert!(!format!("{r:?}").contains("Ada"));
    }

    #[test]
    fn a_syntax_error_fails_at_construction_and_names_the_file() {
        let mut broken = GREETING;
        broken.locales[1].1[2] = "{% extends \"vi/layout.txt\" %}\n{% block content %}\n{{ name \n";
        let err = Templates::new(&[broken]).expect_err("does not parse");
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("vi/greeting.txt"), "{err}");
    }

    #[test]
    fn a_name_defined_twice_is_refused() {
        let err = Templates::new(&[GREETING, GREETING]).expect_err("twice");
        assert!(err.to_string().contains("en/greeting.subject.txt"), "{err}");
        let mut layout = GREETING;
        layout.name = "layout";
        let err = Templates::new(&[layout]).expect_err("a layout's name");
        assert!(matches!(err, TemplateError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn every_locale_is_required() {
        let mut english_twice = GREETING;
        english_twice.locales[1].0 = "en";
        let err = Templates::new(&[english_twice]).expect_err("no vi");
        assert!(matches!(err, TemplateError::Locales { .. }), "{err}");
    }
}
