"""Training-only prompt material for a second data round (``build_prompts(extra=True)``,
``fluid-rt adapt --extra-prompts``).

The first round (718 prompts) taught the adapter its training prompts far better than unseen ones
(1.79 tokens per forward on training prompts against 1.37 held out), which looked like too few
subjects to learn general drafting from. These topics widen it (1747 more prompts). They join the
training set only, under their own templates, and never change the held-out set
(``prompts.build_prompts`` draws them from a separate random stream and drops any that names a
held-out topic).

Measured (shipped adapter's 1800 steps, then 645 more over both rounds, Zen 4, 18 held-out prompts
at 64 tokens): 1.364 tokens per forward against the shipped 1.373 with the K-head, 1.390 against
1.397 with a fixed K of 3: no gain at this budget, so the shipped adapter stays on the first round.
"""

from __future__ import annotations


def _items(text: str) -> list[str]:
    """A ';'-separated list written as a paragraph (one item per line would quadruple the file)."""
    return [" ".join(t.split()) for t in text.split(";") if t.strip()]


EXTRA_TOPICS = {
    "facts": _items(
        """
        the Sun; Mars; Saturn's rings; comets; the Milky Way; oxygen; carbon; iron; gold; silver;
        diamonds; the periodic table; atoms; sound; light; heat; friction; the wheel; the steam
        engine; the airplane; the telephone; radio; television; computers; batteries; solar power;
        wind turbines; nuclear energy; plastic; glass; cotton; silk; rice; wheat; chocolate; cheese;
        sugar; the potato; bananas; apples; oranges; elephants; lions; tigers; giraffes; wolves;
        bats; frogs; snakes; sharks; octopuses; butterflies; ants; spiders; eagles; parrots; camels;
        kangaroos; pandas; polar bears; the Atlantic Ocean; the Mediterranean Sea; the Alps; the
        Andes; the Himalayas; the Mississippi River; the Grand Canyon; Antarctica; Australia;
        Africa; Iceland; Japan; Egypt; Brazil; Canada; India; the pyramids of Giza; Stonehenge; the
        Colosseum; Ancient Greece; the Vikings; the Middle Ages; the Renaissance; the Industrial
        Revolution; the Silk Road; the Aztecs; democracy; money; banks; taxes; libraries; museums;
        hospitals; newspapers; maps; calendars; clocks; the alphabet; numbers; zero; music;
        painting; poetry; theatre; football; tennis; swimming; yoga; sleep; dreams; memory; the
        skin; bones; blood; the lungs; teeth; muscles; bacteria; viruses; fungi; mushrooms; seeds;
        forests; rivers; lakes; islands; caves; snow; hail; fog; hurricanes; tornadoes; climate
        change; recycling; fossils; evolution; cells; genes; the moonlight; stars; satellites;
        rockets; the space station; robots; artificial intelligence; email; smartphones; passwords;
        encryption; the cloud; social media
        """
    ),
    "lists": _items(
        """
        vegetables that grow underground; things to pack for a beach trip; woodworking tools; card
        games; video game genres; pasta shapes; kinds of bread; herbs; citrus fruits; berries; nuts;
        soups; salads; sandwiches; drinks; cocktails without alcohol; cooking methods; baking
        ingredients; cities in Asia; cities in Africa; countries in South America; capital cities;
        islands; mountains; lakes; deserts; oceans and seas; national parks; wild cats; reptiles;
        amphibians; mammals that live in water; pets; horse breeds; cat breeds; trees that lose
        their leaves; houseplants; garden flowers; famous scientists; famous composers; famous
        writers; inventions; ancient civilizations; wonders of the world; musical genres; string
        instruments; wind instruments; percussion instruments; art styles; poetry forms; sports
        played with a ball; water sports; winter sports; martial arts; exercises for the legs; yoga
        poses; parts of a computer; operating systems; web browsers; databases; sorting algorithms;
        design patterns; Python libraries; file formats; keyboard shortcuts; types of renewable
        energy; greenhouse gases; types of clouds; natural disasters; constellations; moons of
        Jupiter; bones in the human body; organs of the body; vitamins; healthy snacks; ways to save
        water; ways to relax; things to do on a rainy day; gifts for a friend; school subjects; jobs
        in a hospital; jobs outdoors; tools a carpenter uses; things in a bathroom; furniture;
        kitchen appliances; clothes for summer; shoes; fabrics; vehicles; parts of a bicycle; parts
        of a flower; shapes; emotions; virtues; holidays around the world; board games for children;
        birds of prey; sea birds; coffee drinks; teas
        """
    ),
    "code": _items(
        """
        counts how many times each word appears in a text; returns the n largest numbers of a list;
        checks whether a string contains only digits; converts a decimal number to binary; converts
        a binary string to an integer; rotates a list by k positions; splits a list into chunks of
        size n; returns the common elements of two lists; finds the index of the smallest element;
        computes the median of a list; returns the mode of a list; checks whether a number is a
        perfect square; computes the power of a number without using **; generates all permutations
        of a string; returns all subsets of a list; checks whether brackets in a string are
        balanced; counts the lines of a file; writes a list of numbers to a CSV file; reads a JSON
        file and returns a dictionary; returns the keys of a dictionary sorted by value; inverts a
        dictionary; removes the vowels from a string; reverses the words of a sentence; checks
        whether a number is an Armstrong number; returns the prime factors of a number; computes the
        least common multiple of two numbers; converts Fahrenheit to Celsius; computes the area of a
        circle; computes the distance between two points; validates an email address with a regular
        expression; counts the uppercase letters in a string; returns the first non-repeated
        character of a string; computes a running total of a list; zips two lists into a dictionary;
        finds the longest common prefix of a list of strings; implements bubble sort; implements
        insertion sort; implements a stack class; implements a queue with two stacks; merges two
        sorted lists; checks whether a linked list has a cycle; returns the depth of a binary tree;
        counts the nodes of a binary tree; computes the dot product of two vectors; multiplies two
        matrices; generates the first n prime numbers; returns the number of days between two dates;
        formats a number with thousands separators; truncates a string to n characters with an
        ellipsis; pads a number with leading zeros; shuffles a list; picks a random element from a
        list; converts a string to title case; counts the occurrences of a substring; replaces every
        space in a string with an underscore; returns the absolute differences of consecutive
        numbers; checks whether all elements of a list are equal; groups a list of words by their
        first letter; computes the cumulative product of a list; returns the length of the longest
        increasing run in a list
        """
    ),
    "stories": [
        f"{who} who {what}"
        for who in _items(
            """
            a shy owl; an old fisherman; a clever crow; a little robot; a sleepy bear; a young inventor;
            a curious rabbit; a lonely dragon; a retired pilot; a street musician; a tiny ant;
            a grumpy cat; a new teacher; a knight; a farmer; a girl from the mountains;
            a boy who cannot whistle; a mermaid
            """
        )
        for what in _items(
            """
            finds a strange egg; gets lost in a big city; wants to fly; makes a new friend;
            discovers a hidden room; has to cross a river; loses something important; wins a contest;
            helps a stranger; is afraid of the dark; plants a seed; builds a boat;
            hears a mysterious song
            """
        )
    ],
    "howto": _items(
        """
        boil an egg; make a salad; cook pasta; make a smoothie; bake cookies; make soup; grill
        vegetables; sharpen a knife; iron a shirt; sew a button; tie a tie; fold a fitted sheet;
        clean a window; remove a coffee stain; unclog a drain; paint a wall; hang a picture; fix a
        squeaky door; build a birdhouse; repot a plant; grow tomatoes; compost kitchen waste; train
        a dog to sit; groom a cat; feed a goldfish; ride a bike; swim faster; stretch before
        exercise; start lifting weights; improve my posture; drink more water; eat healthier; cook
        for a week in advance; make a budget; pay off a loan; open a savings account; negotiate a
        salary; run a meeting; give a presentation; write a cover letter; ask for a raise; learn to
        type faster; take notes in class; read more books; write a short story; start a blog; learn
        to draw; learn to juggle; play chess better; solve a Rubik's cube; meditate; breathe to calm
        down; wake up early; stop procrastinating; set goals; keep a journal; back up my computer;
        create a strong password; speed up a slow computer; use git; write a unit test; debug a
        program; learn SQL; make a website; install Python; use a spreadsheet; send a large file;
        pack a suitcase; travel on a budget; pitch a tent; read a map; prepare for a hike; stay safe
        in the sun; treat a small burn; clean a cut; help someone who is choking; make a first aid
        kit; prepare for a storm; save energy at home; reduce plastic waste; organize a birthday
        party; write a thank-you note; apologize to a friend; be a good listener; teach a child to
        read; choose a good book; care for a cactus; make a paper boat; knit a scarf; wrap a
        present; carve a pumpkin
        """
    ),
}

# Per kind: more ways to ask, for the extra topics only (the first round's prompt texts stay as
# they were, so their distilled answers are reused).
EXTRA_TEMPLATES = {
    "facts": [
        "What should I know about {t}?",
        "Give me a short overview of {t}.",
        "Share some interesting facts about {t}.",
        "Write a paragraph about {t}.",
    ],
    "lists": [
        "Can you list some {t}?",
        "Give me examples of {t}.",
        "List a few {t} with a short note on each.",
    ],
    "code": [
        "Write a Python function that {t}.",
        "I need a Python function that {t}. Can you write it?",
        "Implement a Python function that {t}, with a short explanation.",
    ],
    "arithmetic": ["What does {t} equal?", "Work out {t} for me.", "How much is {t}?"],
    "stories": [
        "Write a short story about {t}.",
        "Tell me a bedtime story about {t}.",
        "Write a story for kids about {t}.",
    ],
    "howto": [
        "How can I {t}?",
        "What are the steps to {t}?",
        "Teach me how to {t}.",
        "Any tips on how to {t}?",
    ],
}
